"""The keys a ledger belongs to: the subject key, known by its fingerprint, and every signing key it has used.

A host started with another subject key would file hashes that match no hold and seal subjects its workers
cannot open; a host with another signing key would issue certificates nobody can check against the published
key. So the first command to open a ledger records both, and every later one must bring the same keys or
stop before it touches anything. The signing key changes only by a rotation, cross-signed by the old key
and the new one, so the whole key history is anchored in the key a host holds now.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator import certificates
from orchestrator.config import ConfigError
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    Certificate,
    LedgerIdentity,
    Request,
    SignedHead,
    SigningKey,
)

FINGERPRINT_LABEL = b"lethe/subject-key-fingerprint/v1"


class KeyMismatch(ConfigError):
    """The host's key is not the one this ledger was created with (or rotated to): nothing was done."""


@dataclass(frozen=True)
class KnownKey:
    generation: int
    key_id: str
    public_key: Ed25519PublicKey
    pem: str
    added_at: datetime


def subject_fingerprint(subject_key: bytes) -> str:
    """HMAC-SHA256 of a fixed label under the subject key: tells keys apart, reveals nothing of the key."""
    return hmac.new(subject_key, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def identity_body(identity: LedgerIdentity) -> dict[str, object]:
    return {"subject_key_fingerprint": identity.subject_key_fingerprint, "heads_from": identity.heads_from}


def rotation_statement(generation: int, old: KnownKey, new_pem: str) -> dict[str, object]:
    """What both keys of a rotation sign: the new key's place in the history, and the key it follows."""
    new = _load_public(new_pem)
    return {"rotation": generation, "previous_key_id": old.key_id, "previous_public_key": old.pem,
            "key_id": certificates.key_id(new), "public_key": new_pem}


def known_keys(s: Session) -> list[KnownKey]:
    """Every signing key the ledger has used, oldest first."""
    return [KnownKey(k.generation, k.key_id, _load_public(k.public_key), k.public_key, k.added_at)
            for k in s.scalars(select(SigningKey).order_by(SigningKey.generation))]


def history_problems(s: Session) -> list[str]:
    """Each key after the first must be cross-signed (by the key before it and by itself), so a key slipped
    into the table, or an old key swapped for another, shows."""
    problems = []
    rows = list(s.scalars(select(SigningKey).order_by(SigningKey.generation)))
    for n, row in enumerate(rows):
        where = f"signing key {row.key_id} (generation {row.generation})"
        public = _load_public(row.public_key)
        if certificates.key_id(public) != row.key_id or row.generation != n + 1:
            problems.append(f"{where}: its id or generation was changed")
        elif n:
            before = rows[n - 1]
            old = KnownKey(before.generation, before.key_id, _load_public(before.public_key), before.public_key,
                           before.added_at)
            statement = rotation_statement(row.generation, old, row.public_key)
            if not (certificates.signature_valid(statement, row.previous_signature, old.public_key)
                    and certificates.signature_valid(statement, row.own_signature, public)):
                problems.append(f"{where}: not taken through a rotation signed by the key before it")
    return problems


def check(s: Session, subject_key: bytes, signing_key: Ed25519PrivateKey,
          unseal: Callable[[str, bytes], object]) -> bool:
    """Refuse (KeyMismatch) a subject or signing key other than the ledger's, before anything is written;
    record both at first use. Returns True when this call recorded them (the ledger's first use since 0006).

    A ledger that already holds requests when it first records its keys is checked against them: a sealed
    subject must open with the subject key and the newest certificate must verify with the signing key.
    Recording (and so adopting the rows as they are) happens only for a ledger that has never been under
    proof: a fingerprint or key removed from one that has is tampering, refused, never taken as a first use.
    """
    # Locked: a second host starting at the same moment reads the identity only once the first committed.
    identity = s.get(LedgerIdentity, 1, with_for_update=True)
    if identity is None:
        raise KeyMismatch("the ledger has no identity row (migration 0006 writes it): it was tampered with; "
                          "restore it from a backup")
    fingerprint = subject_fingerprint(subject_key)
    if identity.subject_key_fingerprint is not None and identity.subject_key_fingerprint != fingerprint:
        raise KeyMismatch(_subject_mismatch(identity.subject_key_fingerprint, fingerprint))
    own_id = certificates.key_id(signing_key.public_key())
    history = known_keys(s)
    if history:
        _check_signing(history, own_id)
    if identity.subject_key_fingerprint is not None and history:
        return False
    evidence = proof_started(s)
    if evidence is not None:
        removed = "subject key fingerprint" if identity.subject_key_fingerprint is None else "signing keys"
        raise KeyMismatch(f"ledger identity tampered: its {removed} removed, but the ledger {evidence}, so it "
                          "is no ledger from before migration 0006 to adopt; restore ledger_identity and "
                          "signing_keys from a backup")
    return _record(s, identity, fingerprint, signing_key, own_id, unseal)


def proof_started(s: Session) -> str | None:
    """What shows that lethe has kept proof in this ledger (so its identity was recorded once already), or
    None for a ledger from before migration 0006, the only one whose rows may be adopted as they are."""
    if s.scalar(select(SigningKey.generation).limit(1)) is not None:
        return "has recorded signing keys"
    if s.scalar(select(SignedHead.entry_id).limit(1)) is not None:
        return "has signed chain heads"
    if s.scalar(select(AuditEntry.id).where(AuditEntry.action.like("rows.%")).limit(1)) is not None:
        return "has row digests on its audit chain"
    return None


def _record(s: Session, identity: LedgerIdentity, fingerprint: str, signing_key: Ed25519PrivateKey, own_id: str,
            unseal: Callable[[str, bytes], object]) -> bool:
    sealed = s.execute(select(Request.id, Request.sealed_subject).where(Request.sealed_subject.is_not(None))
                       .limit(1)).first()
    if sealed is not None and sealed[1] is not None:
        try:
            unseal(sealed[0], sealed[1])
        except Exception:  # InvalidTag: sealed under another key
            raise KeyMismatch("LETHE_SUBJECT_KEY differs from the key this ledger's requests were filed with: "
                              "set the key every other host uses") from None
    newest = s.scalar(select(Certificate.body).order_by(Certificate.issued_at.desc()).limit(1))
    if newest is not None and not certificates.verify(certificates.parse_certificate(newest.encode()),
                                                      signing_key.public_key()):
        raise KeyMismatch(f"LETHE_SIGNING_KEY (key_id {own_id}) did not sign this ledger's certificates: set the "
                          "key every other host uses")
    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    s.execute(dialect.insert(SigningKey).values(
        generation=1, key_id=own_id, public_key=certificates.public_pem(signing_key),
        added_at=datetime.now(UTC)).on_conflict_do_nothing())
    _check_signing(known_keys(s), own_id)  # another host recorded another key first
    claimed: CursorResult[Any] = s.execute(  # type: ignore[assignment]
        update(LedgerIdentity).where(LedgerIdentity.id == 1, LedgerIdentity.subject_key_fingerprint.is_(None))
        .values(subject_key_fingerprint=fingerprint))
    s.expire(identity)
    if not claimed.rowcount:
        if identity.subject_key_fingerprint != fingerprint:  # another host recorded another key first
            raise KeyMismatch(_subject_mismatch(identity.subject_key_fingerprint or "", fingerprint))
        return False
    # What heads_from says is never taken from the table (anyone could have written it): signed heads are
    # required from the chain's head at adoption, as migration 0006 sets it.
    identity.heads_from = _chain_head(s)
    identity.key_id = own_id
    identity.signature = certificates.signature_of(identity_body(identity), signing_key)
    return True


def _chain_head(s: Session) -> int:
    last = s.scalar(select(func.max(AuditEntry.id)))
    if last is not None:
        return int(last)
    checkpoint = s.get(AuditCheckpoint, 1)
    return checkpoint.last_pruned_id if checkpoint is not None else 0


def _check_signing(history: list[KnownKey], own_id: str) -> None:
    current = history[-1]
    if own_id == current.key_id:
        return
    retired = next((k for k in history if k.key_id == own_id), None)
    if retired is not None:
        raise KeyMismatch(f"LETHE_SIGNING_KEY (key_id {own_id}) was rotated out on "
                          f"{certificates.rfc3339(history[retired.generation].added_at)}; this ledger signs with "
                          f"key_id {current.key_id}: set that key on this host")
    raise KeyMismatch(f"LETHE_SIGNING_KEY (key_id {own_id}) is not this ledger's signing key (key_id "
                      f"{current.key_id}); a new key is taken only through `lethe keys rotate --new-key PATH`")


def _subject_mismatch(recorded: str, given: str) -> str:
    return (f"LETHE_SUBJECT_KEY differs from the key this ledger was created with (fingerprint {recorded[:16]}, "
            f"this host's {given[:16]}): set the same key on every host")


def _load_public(pem: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def rotate(s: Session, current: Ed25519PrivateKey, new: Ed25519PrivateKey) -> dict[str, object]:
    """Add ``new`` as the next signing key, cross-signed by ``current`` (which must be the ledger's key now)
    and by itself. Returns the signed statement, for the audit entry that records the rotation."""
    history = known_keys(s)
    _check_signing(history, certificates.key_id(current.public_key()))
    new_pem = certificates.public_pem(new)
    new_id = certificates.key_id(new.public_key())
    if any(k.key_id == new_id for k in history):
        raise ConfigError(f"key_id {new_id} is already one of this ledger's signing keys: rotate to a new key")
    generation = history[-1].generation + 1
    statement = rotation_statement(generation, history[-1], new_pem)
    signatures = {"previous_signature": certificates.signature_of(statement, current),
                  "own_signature": certificates.signature_of(statement, new)}
    s.add(SigningKey(generation=generation, key_id=new_id, public_key=new_pem, added_at=datetime.now(UTC),
                     **signatures))
    return {**statement, **signatures}
