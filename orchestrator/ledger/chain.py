"""The audit chain's operations: certificates read back, public keys, verification, signed heads, key
rotation and pruning (the chain's rules themselves live in ``proof``)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select, text

from orchestrator import keys
from orchestrator.certificates import rfc3339
from orchestrator.ledger import proof
from orchestrator.ledger.common import (
    AUDIT_LOCK_KEY,
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
            return proof.verify(s)

    def signed_through(self) -> tuple[int, int]:
        """(last signed entry, last entry): a truncated tail after the last signed head goes unnoticed."""
        with self.sessions() as s:
            return (s.scalar(select(func.max(SignedHead.entry_id))) or 0,
                    s.scalar(select(func.max(AuditEntry.id))) or 0)

    def sign_head(self) -> bool:
        """Sign the chain's head if it is not signed yet (reconcile calls this: never more than one pass of
        entries unsigned). Returns True when it signed."""
        with self.sessions.begin() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
            head = s.execute(select(AuditEntry.id, AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)).first()
            if head is None or s.get(SignedHead, head[0]) is not None:
                return False
            proof.sign_head(s, self.signing_key, head[0], head[1])
            return True

    def rotate_signing_key(self, new_key: Ed25519PrivateKey, actor: str = "cli") -> str:
        """Take a new signing key: the rotation is an audit entry, cross-signed by the old key and the new
        one; from then on the new key signs. Returns its key_id. Every earlier certificate still verifies."""
        with self.sessions.begin() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
            statement = keys.rotate(s, self.signing_key, new_key)
            self._audit(s, "keys.rotated", None, actor=actor, detail=statement)
            proof.sign_head(s, self.signing_key, *s.info["audit_head"])  # the old key's last head
        self.signing_key = new_key
        self.sign_head()  # the new key's first
        return str(statement["key_id"])

    def prune(self, retention_days: int, tombstone_days: int = 90) -> int:
        """Forget finished requests older than the retention period, tombstones after ``tombstone_days`` and
        idempotency keys after 30 days.

        Only a prefix of the audit chain can go (the chain must stay contiguous): the entries before the
        first one of a request that is kept. A signed checkpoint keeps the hash the remaining chain starts
        from, so verify-ledger still proves the rest; the digests of held and tombstoned rows those entries
        recorded are carried over into the prune's entry, and the tombstones removed are named in it.
        Returns the number of requests pruned.
        """
        at = now()
        with self.sessions.begin() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
            removed = list(s.scalars(delete(Tombstone).where(
                Tombstone.erased_at < at - timedelta(days=tombstone_days)).returning(Tombstone.id)))
            s.execute(delete(OutboxEvent).where(OutboxEvent.published_at < at - timedelta(days=IDEMPOTENCY_DAYS)))
            old_keys = Request.received_at < at - timedelta(days=IDEMPOTENCY_DAYS)
            for request in s.scalars(select(Request).where(old_keys, Request.idempotency_key.is_not(None))):
                request.idempotency_key, request.idempotency_digest = None, None
            cutoff = at - timedelta(days=retention_days)
            expired = select(Request.id).where(Request.status.in_(TERMINAL_REQUEST), Request.completed_at < cutoff)
            kept_first = s.scalar(select(func.min(AuditEntry.id)).where(
                AuditEntry.request_id.is_not(None), AuditEntry.request_id.not_in(expired)))
            last_entry = s.scalar(select(func.max(AuditEntry.id))) or 0
            through = kept_first - 1 if kept_first is not None else last_entry
            ids = list(s.scalars(select(AuditEntry.request_id).distinct().where(
                AuditEntry.id <= through, AuditEntry.request_id.is_not(None))))
            detail: dict[str, Any] = {"tombstones_removed": proof.id_ranges(removed)} if removed else {}
            if through >= 1 and ids:
                last_hash = s.scalar(select(AuditEntry.hash).where(AuditEntry.id == through))
                assert last_hash is not None
                carried = proof.recorded_rows(s, through)
                proof.apply_rows(carried, detail)
                detail["restated"] = {k: d for k, d in carried.items()
                                      if d is not None and not k.startswith("request:")}
                checkpoint = s.get(AuditCheckpoint, 1)
                if checkpoint is None:
                    checkpoint = AuditCheckpoint(id=1)
                    s.add(checkpoint)
                checkpoint.last_pruned_id, checkpoint.last_pruned_hash, checkpoint.pruned_at = through, last_hash, at
                proof.sign_checkpoint(checkpoint, self.signing_key)
                s.execute(delete(SignedHead).where(SignedHead.entry_id <= through))
                s.execute(delete(AuditEntry).where(AuditEntry.id <= through))
                s.execute(delete(Request).where(Request.id.in_(ids)))
                detail.update({"requests": len(ids), "through_entry": through, "retention_days": retention_days})
            else:
                ids = []
            if detail:
                self._audit(s, "ledger.pruned", None, actor="reconcile", detail=detail)
                proof.sign_head(s, self.signing_key, *s.info["audit_head"])
            return len(ids)

