"""The audit chain's operations: certificates read back, public keys, verification, signed heads, key
rotation and pruning (the chain's rules themselves live in ``proof``)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.orm import Session

from orchestrator import keys
from orchestrator.certificates import rfc3339
from orchestrator.ledger import appends, proof, verification
from orchestrator.ledger.common import (
    IDEMPOTENCY_DAYS,
    TERMINAL_REQUEST,
    LedgerError,
    now,
)
from orchestrator.ledger.core import LedgerCore
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    Certificate,
    OutboxEvent,
    Request,
    SignedHead,
    Tombstone,
)

SIGN_WINDOW = 100_000  # entries a reconcile pass looks back over for chain tips to sign


class ChainLedger(LedgerCore):
    def certificate(self, request_id: str) -> dict[str, Any]:
        """The signed certificate of a completed request."""
        with self.sessions() as s:
            request = self._request(s, request_id)
            cert = s.get(Certificate, request_id)
            if cert is None:
                why = "dry runs get none" if request.dry_run else f"the request is {request.status}"
                raise LedgerError(f"no certificate for {request_id}: {why}")
            body: dict[str, Any] = json.loads(cert.body)
            return body

    def public_key_pem(self) -> str:
        """Every public key that verifies this ledger's certificates, newest (the one signing now) first, each
        headed by a ``# key_id …`` line: what ``lethe certificate --public-key`` prints and the documented
        offline check reads. A plain PEM reader takes the first key, the current one."""
        return "".join(f"# key_id {k.key_id} (generation {k.generation}, since {rfc3339(k.added_at)})\n{k.pem}"
                       for k in reversed(self.public_keys()))

    def public_keys(self) -> list[keys.KnownKey]:
        """Every signing key this ledger has used, oldest first (the last one signs now)."""
        with self.sessions() as s:
            return keys.known_keys(s)

    def verify(self) -> list[str]:
        """Walk the audit chain, its signed heads and checkpoint, the rows it protects (requests, holds,
        tombstones), completion records and certificates; return the problems (the first names the first bad
        entry), or an empty list when the ledger is intact."""
        with self.sessions() as s:
            return verification.verify(s)

    def signed_through(self) -> tuple[int, int]:
        """(last signed entry, last entry): a truncated tail after the last signed head goes unnoticed."""
        with self.sessions() as s:
            return (s.scalar(select(func.max(SignedHead.entry_id))) or 0,
                    s.scalar(select(func.max(AuditEntry.id))) or 0)

    def sign_head(self) -> bool:
        """Sign the tip of every chain that moved among the newest ``SIGN_WINDOW`` entries and is not signed
        yet (reconcile calls this each pass: never more than one pass of entries unsigned while a pass sees
        fewer than that many). Returns True when it signed any."""
        with self.sessions.begin() as s:
            appends.lock_ledger_chain(s)  # one signer at a time
            newest = s.scalar(select(func.max(AuditEntry.id)))
            if newest is None:
                return False
            tips = s.execute(appends.chain_tips(AuditEntry.id > newest - SIGN_WINDOW)
                             .where(~exists().where(SignedHead.entry_id == AuditEntry.id))
                             .order_by(AuditEntry.id)).all()
            for entry_id, entry_hash, _, _ in tips:
                proof.sign_head(s, self.signing_key, entry_id, entry_hash)
            # The tips on the ledger's own (signed) chain too: a chain cut back behind its tip, its heads
            # removed with the entries, still falls short of what the ledger's chain says it reached.
            reached = {chain: [seq, h] for _, h, chain, seq in tips if chain != proof.LEDGER_CHAIN}
            if reached:
                self._audit(s, proof.ROLLUP, None, actor="reconcile", detail={"tips": dict(sorted(reached.items()))})
                appends.sign_at_commit(s)
            return bool(tips)

    def rotate_signing_key(self, new_key: Ed25519PrivateKey, actor: str = "cli") -> str:
        """Take a new signing key: the rotation is an audit entry, cross-signed by the old key and the new
        one; from then on the new key signs. Returns its key_id. Every earlier certificate still verifies."""
        with self.sessions.begin() as s:
            appends.lock_ledger_chain(s)
            statement = keys.rotate(s, self.signing_key, new_key)
            self._audit(s, "keys.rotated", None, actor=actor, detail=statement)
            appends.sign_at_commit(s)  # the old key's last head: it still signs until this commits
        self.signing_key = new_key
        self.sign_head()  # the new key's first
        return str(statement["key_id"])

    def prune(self, retention_days: int, tombstone_days: int = 90) -> int:
        """Forget finished requests older than the retention period, tombstones after ``tombstone_days`` and
        idempotency keys after 30 days.

        The ledger's chain must stay contiguous, so only a prefix of it can go: the entries before the first
        one written since the oldest kept request was received. With it go the request chains those entries
        opened (whole: each was opened before that request, so it is an expired one) and the requests
        their entries before migration 0010 name, but never a request the ledger's chain names again after
        them (``_whole``). A signed checkpoint keeps the hash the ledger's chain now
        starts from, so verify-ledger still proves the rest; the digests of held and tombstoned rows the
        removed entries recorded are carried over into the prune's entry, and the tombstones removed are
        named in it. Returns the number of requests pruned.
        """
        at = now()
        with self.sessions.begin() as s:
            appends.lock_ledger_chain(s)
            removed = list(s.scalars(delete(Tombstone).where(
                Tombstone.erased_at < at - timedelta(days=tombstone_days)).returning(Tombstone.id)))
            s.execute(delete(OutboxEvent).where(OutboxEvent.published_at < at - timedelta(days=IDEMPOTENCY_DAYS)))
            old_keys = Request.received_at < at - timedelta(days=IDEMPOTENCY_DAYS)
            for request in s.scalars(select(Request).where(old_keys, Request.idempotency_key.is_not(None))):
                request.idempotency_key, request.idempotency_digest = None, None
            cutoff = at - timedelta(days=retention_days)
            expired = and_(Request.status.in_(TERMINAL_REQUEST), Request.completed_at.is_not(None),
                           Request.completed_at < cutoff)
            # A chain is opened, and a request's first entry written, after the request was received (in
            # the transaction that files it, by the clock of the host that files it).
            oldest_kept = s.scalar(select(func.min(Request.received_at)).where(~expired))
            ledger = AuditEntry.chain == proof.LEDGER_CHAIN
            first_kept = s.scalar(select(func.min(AuditEntry.seq)).where(ledger, AuditEntry.at >= oldest_kept)) \
                if oldest_kept is not None else None
            through = _whole(s, first_kept - 1 if first_kept is not None else (
                s.scalar(select(func.max(AuditEntry.seq)).where(ledger)) or 0))
            prefix = ledger & (AuditEntry.seq <= through)
            ids = set(s.scalars(select(AuditEntry.request_id).distinct().where(prefix,
                                                                               AuditEntry.request_id.is_not(None))))
            ids |= proof.opened_chains(s, AuditEntry.seq <= through)
            detail: dict[str, Any] = {"tombstones_removed": proof.id_ranges(removed)} if removed else {}
            if through >= 1 and ids:
                last_hash = s.scalar(select(AuditEntry.hash).where(ledger, AuditEntry.seq == through))
                assert last_hash is not None
                gone = prefix | AuditEntry.chain.in_(ids)
                carried = proof.recorded_rows(s, gone)
                proof.apply_rows(carried, detail)
                detail["restated"] = {k: d for k, d in carried.items()
                                      if d is not None and not k.startswith("request:")}
                checkpoint = s.get(AuditCheckpoint, 1)
                if checkpoint is None:
                    checkpoint = AuditCheckpoint(id=1)
                    s.add(checkpoint)
                checkpoint.last_pruned_id, checkpoint.last_pruned_hash, checkpoint.pruned_at = through, last_hash, at
                proof.sign_checkpoint(checkpoint, self.signing_key)
                s.execute(delete(SignedHead).where(SignedHead.entry_id.in_(select(AuditEntry.id).where(gone))))
                s.execute(delete(AuditEntry).where(gone))
                s.execute(delete(Request).where(Request.id.in_(ids)))
                detail.update({"requests": len(ids), "through_entry": through, "retention_days": retention_days})
            else:
                ids = set()
            if detail:
                self._audit(s, "ledger.pruned", None, actor="reconcile", detail=detail)
                appends.sign_at_commit(s)
            return len(ids)


def _whole(s: Session, through: int) -> int:
    """How far a prune may take the ledger's chain (``through`` at most) and still take each request it
    names whole. Entries before migration 0010 name their requests on the ledger's chain; such a request
    in flight at the upgrade is named again after them: by its later entries, and by the opening of its
    chain (at the ledger's first start after the upgrade, or at its next write). If a request received
    later is kept, the prefix can end between the two; pruning the request there would leave its opening
    naming a chain pruned with it (verify-ledger: "removed"), or its later entries naming rows that are
    gone. So the prefix ends before the first entry of any such request, again until none is left (it only
    shrinks): the request and its chain stay until a later prune takes them whole. Once the entries from
    before 0010 are pruned, this is the one query that finds no request named."""
    ledger = AuditEntry.chain == proof.LEDGER_CHAIN
    while through >= 1:
        named = select(AuditEntry.request_id).where(ledger, AuditEntry.seq <= through,
                                                    AuditEntry.request_id.is_not(None))
        if s.scalar(named.limit(1)) is None:
            return through
        again = set(s.scalars(select(AuditEntry.request_id).distinct().where(
            ledger, AuditEntry.seq > through, AuditEntry.request_id.in_(named))))
        # A chain exists only once opened: one of a request named here not opened here was opened after.
        chains = set(s.scalars(select(AuditEntry.chain).distinct().where(AuditEntry.chain.in_(named))))
        late = again | (chains - proof.opened_chains(s, AuditEntry.seq <= through))
        if not late:
            return through
        through = (s.scalar(select(func.min(AuditEntry.seq)).where(
            ledger, AuditEntry.seq <= through, AuditEntry.request_id.in_(late))) or 1) - 1
    return through
