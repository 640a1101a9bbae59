"""The proof a ledger keeps of itself (the walk that checks it, ``lethe verify-ledger``, is ``verification``).

- The audit chain: each entry's hash covers the one before it, so an edited, removed or reordered entry shows.
- Signed heads: an entry's hash signed with the signing key, at every certificate, at every ``HEAD_EVERY``-th
  entry and whenever reconcile finds the head unsigned. Someone with write access to the database but not
  the key can recompute every hash of a rewritten chain, but not these signatures; so the chain is proven up
  to the last signed head, and only the entries after it could go unnoticed (docs/threat-model-ledger.md).
- Protected rows: every change to a request, task, hold or tombstone row puts a digest of the row's
  protected fields on the chain (one ``rows.changed`` entry per transaction, written by a session hook, so
  no code path can forget it), with the digest of what the row was before the change; verify recomputes the
  digests from the rows, and checks each change started from the row the chain last recorded (so an edit
  outside lethe is not laundered by the next honest change).
- Approvals: what lets a purge go over a target's ``max_items`` is a ``request.approved`` entry on the chain
  (``approved_count``); verify names a completion over the limit that no such entry covers.
- Data maps: each stored map's text must hash to the digest requests were planned under.
- The pruning checkpoint is signed, so a checkpoint forged to hide the oldest entries fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import certificates
from orchestrator.certificates import rfc3339
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    Base,
    CompletionRecord,
    Hold,
    Request,
    SignedHead,
    Task,
    Tombstone,
)

GENESIS_HASH = "0" * 64  # prev_hash of the first entry of a chain
LEDGER_CHAIN = "ledger"  # the chain of what belongs to no request, and of every request chain's opening
HEAD_EVERY = 100  # a signed head at every entry whose seq is a multiple of this: never more unsigned in a row
ROW_ACTIONS = ("rows.changed", "rows.adopted", "ledger.pruned")  # entries whose detail carries row digests
OPENING = "chains.opened"  # the ledger chain's entry naming the request chains a transaction started
ROLLUP = "chains.signed"  # the ledger chain's entry recording how far reconcile found request chains
PRUNED_WITH_REQUEST = ("request", "task")  # rows a prune deletes together with the request's entries

# The fields of each protected table that a change must put on the chain. Columns not named here (the
# sealed subject, idempotency keys, leases, attempts, progress, dispatch bookkeeping) change without an
# entry: they prove nothing. A task's are those that decide what it deletes and whether it may: its target
# and kind, what it waits for, its status, the count it waited with and the count approved, whether its
# next claim continues a sliced purge (and so skips the count), and what earlier slices deleted.
PROTECTED: dict[type[Base], tuple[str, tuple[str, ...]]] = {
    Request: ("request", ("id", "scope", "dataset", "status", "dry_run", "regime", "received_at", "due_at",
                          "completed_at", "data_map_digest", "subject_hashes", "actor", "approved_by",
                          "approved_at", "extension_reason")),
    Task: ("task", ("id", "request_id", "target", "kind", "after", "status", "counted_items", "approved_items",
                    "continues", "carried_deleted")),
    Hold: ("hold", ("id", "subject_hash", "reason", "until", "created_at", "created_by", "released_at",
                    "released_by")),
    Tombstone: ("tombstone", ("id", "subject_hash", "request_id", "erased_at")),
}


def audit_hash(entry: AuditEntry) -> str:
    """The entry's position in its chain (``id`` before migration 0010, when there was one chain: so the
    ledger chain's entries hash as they always did) and its content, and the hash of the entry before it.
    A request chain's entries also cover their chain's name: an entry moved to another chain shows."""
    return certificates.sha256_hex({
        "id": entry.seq, "at": rfc3339(entry.at), "request_id": entry.request_id, "task_id": entry.task_id,
        "actor": entry.actor, "action": entry.action, "detail": entry.detail, "prev_hash": entry.prev_hash,
        **({"chain": entry.chain} if entry.chain != LEDGER_CHAIN else {}),
    })


# -- protected rows ---------------------------------------------------------------------------------------
def row_key(row: Base) -> str:
    return f"{PROTECTED[type(row)][0]}:{row.id}"  # type: ignore[attr-defined]


def row_chain(row: Base) -> str:
    """The chain a protected row's changes go on: its request's; a hold's, the ledger's."""
    if isinstance(row, Request):
        return row.id
    if isinstance(row, (Task, Tombstone)):
        return row.request_id
    return LEDGER_CHAIN


WAS = "was:"  # a key ``was:<row key>`` in an entry's rows: the digest of that row before this change


def row_digest(row: Base) -> str:
    return _digest({f: getattr(row, f) for f in PROTECTED[type(row)][1]})


def _digest(values: dict[str, Any]) -> str:
    return certificates.sha256_hex({f: rfc3339(v) if isinstance(v, datetime) else v for f, v in values.items()})


def _change(row: Base) -> tuple[bool, str | None]:
    """(whether a protected field of this flushed row changed, the digest of the row before the change, or
    None when that is not known: the old value of a field was never loaded)."""
    attrs = inspect(row).attrs
    before: dict[str, Any] = {}
    changed, known = False, True
    for f in PROTECTED[type(row)][1]:
        history = attrs[f].history
        if history.added or history.deleted:
            changed = True
            known = known and bool(history.deleted)
            before[f] = history.deleted[0] if history.deleted else None
        else:
            before[f] = getattr(row, f)
    return changed, _digest(before) if known else None


def apply_rows(expected: dict[str, str | None], detail: dict[str, Any]) -> None:
    """Update ``row key -> digest`` (None: deleted) with what one entry says, in chain order: ``rows`` are
    changes; ``restated`` are digests a prune carried over from the entries it removed (a later change wins);
    ``tombstones_removed`` are id ranges a prune deleted. ``was:`` keys (what a changed row was) are checked
    by verify, not applied."""
    expected.update({k: d for k, d in (detail.get("rows") or {}).items() if not k.startswith(WAS)})
    for key, digest in (detail.get("restated") or {}).items():
        expected.setdefault(key, digest)
    for first, last in detail.get("tombstones_removed") or []:
        for tombstone_id in range(first, last + 1):
            expected.pop(f"tombstone:{tombstone_id}", None)


def track_rows(sessions: sessionmaker[Session],
               at_commit: Callable[[Session, dict[str, dict[str, str | None]]], object],
               transaction_keys: Iterable[str] = ()) -> None:
    """Put every change of a protected row on the chain: after each flush the changed rows' digests (and
    what each was before, under ``was:``) are noted by chain; before commit ``at_commit(session, rows by
    chain)`` puts them on their chains (one entry per chain) and ends the transaction's appends. The
    session's ``transaction_keys`` (chain tips, heads due) are forgotten when the transaction ends."""

    @event.listens_for(sessions, "after_flush")
    def _note(s: Session, _context: Any) -> None:
        # Attribute history still holds the pre-flush values here: a row whose protected fields did not
        # change (a lease renewed) makes no entry; one that did notes what it was, once per transaction.
        pending: dict[str, dict[str, str | None]] = s.info.setdefault("rows_pending", {})
        for row in s.new:
            if type(row) in PROTECTED:
                pending.setdefault(row_chain(row), {})[row_key(row)] = row_digest(row)
        for row in s.dirty:
            if type(row) in PROTECTED:
                changed, was = _change(row)
                if changed:
                    key, rows = row_key(row), pending.setdefault(row_chain(row), {})
                    if key not in rows and was is not None:
                        rows[WAS + key] = was
                    rows[key] = row_digest(row)
        for row in s.deleted:
            if type(row) in PROTECTED:
                pending.setdefault(row_chain(row), {})[row_key(row)] = None

    @event.listens_for(sessions, "before_commit")
    def _append(s: Session) -> None:
        s.flush()
        at_commit(s, s.info.pop("rows_pending", None) or {})

    forget = ("heads_signed", "rows_pending", *transaction_keys)

    @event.listens_for(sessions, "after_commit")
    @event.listens_for(sessions, "after_rollback")
    def _forget(s: Session) -> None:
        # The chains' tips and what was signed belong to one transaction: a session used again re-reads them
        # under the chains' locks.
        for name in forget:
            s.info.pop(name, None)


def recorded_rows(s: Session, removed: Any) -> dict[str, str | None]:
    """The row digests that the entries a prune removes (those ``removed``, a where clause, selects) leave
    in force (what it must carry over), but for requests and their tasks, which go with those entries."""
    expected: dict[str, str | None] = {}
    for detail in s.scalars(select(AuditEntry.detail).where(removed, AuditEntry.action.in_(ROW_ACTIONS))
                            .order_by(AuditEntry.id).execution_options(yield_per=1000)):
        apply_rows(expected, detail)
    return {k: d for k, d in expected.items() if k.partition(":")[0] not in PRUNED_WITH_REQUEST}


def opened_chains(s: Session, *where: Any) -> set[str]:
    """The request chains the ledger chain's openings (those ``where`` selects, else all) name."""
    return {chain for detail in s.scalars(select(AuditEntry.detail).where(AuditEntry.chain == LEDGER_CHAIN,
                                                                          AuditEntry.action == OPENING, *where))
            for chain in detail.get("chains") or []}


def approved_count(s: Session, task: Task) -> int | None:
    """The count an admin approved for this task, as the audit chain records it (the newest
    ``request.approved`` entry of its request naming its target), or None when none did. What a claim must
    read, not the task row's ``approved_items``, which anyone with write access to the database can set."""
    # The first opening, found by walking the ledger chain's index from its start (openings are frequent).
    split = (select(AuditEntry.seq).where(AuditEntry.chain == LEDGER_CHAIN, AuditEntry.action == OPENING)
             .order_by(AuditEntry.seq).limit(1).scalar_subquery())
    own_or_old = (AuditEntry.chain == task.request_id) | (
        (AuditEntry.chain == LEDGER_CHAIN) & (AuditEntry.seq < func.coalesce(split, AuditEntry.seq + 1)))
    for detail in s.scalars(select(AuditEntry.detail).where(AuditEntry.request_id == task.request_id,
                                                            AuditEntry.action == "request.approved", own_or_old)
                            .order_by(AuditEntry.id.desc())):
        if task.target in (detail.get("targets") or []):
            count = (detail.get("items") or {}).get(task.target)
            return int(count) if count is not None else None
    return None


def id_ranges(ids: Iterable[int]) -> list[list[int]]:
    """[[first, last], …] of consecutive runs: a prune's thousands of tombstone ids in a few numbers."""
    ranges: list[list[int]] = []
    for n in sorted(ids):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ranges


# -- signatures -------------------------------------------------------------------------------------------
def head_body(head: SignedHead) -> dict[str, Any]:
    return {"audit_entry": head.entry_id, "hash": head.hash, "key_id": head.key_id,
            "signed_at": rfc3339(head.signed_at)}


def sign_head(s: Session, key: Ed25519PrivateKey, entry_id: int, entry_hash: str) -> None:
    """Sign the chain up to this entry (once per entry; the row is written with the transaction)."""
    signed: set[int] = s.info.setdefault("heads_signed", set())
    if entry_id in signed:
        return
    signed.add(entry_id)
    head = SignedHead(entry_id=entry_id, hash=entry_hash, key_id=certificates.key_id(key.public_key()),
                      signed_at=datetime.now(UTC))
    head.signature = certificates.signature_of(head_body(head), key)
    s.add(head)


def checkpoint_body(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {"last_pruned_id": checkpoint.last_pruned_id, "last_pruned_hash": checkpoint.last_pruned_hash,
            "pruned_at": rfc3339(checkpoint.pruned_at), "key_id": checkpoint.key_id}


def sign_checkpoint(checkpoint: AuditCheckpoint, key: Ed25519PrivateKey) -> None:
    checkpoint.key_id = certificates.key_id(key.public_key())
    checkpoint.signature = certificates.signature_of(checkpoint_body(checkpoint), key)


def record_detail(record: CompletionRecord) -> dict[str, Any]:
    return {"target": record.target, "deleted": record.deleted, "residue": record.residue,
            "level": record.level, "verified_at": rfc3339(record.verified_at)}
