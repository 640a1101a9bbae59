"""Appending to the audit chains: one chain per request, and the ledger's own.

Why many chains: an entry's hash covers the entry before it, so one global chain makes every writer wait
for the one before it (a global lock held from a transaction's first entry to its commit; it capped the
whole ledger near 600 tasks/s however many workers ran: docs/scaling.md). A request's entries go on its own
chain instead, locked by the request's row, which every transaction that changes the request locks anyway:
workers of different requests never wait on each other. The ``ledger`` chain (``proof.LEDGER_CHAIN``, under
the old advisory lock) keeps what belongs to no request (holds, lineage, keys, prunes) and names every
request chain when it opens (one ``chains.opened`` entry per transaction, at commit, so the global lock is
held only for that last insert and the commit). So a whole request chain removed, or one made up, still
shows: the ledger's chain says which exist. The rules verify-ledger checks live in ``proof``.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import Session

from orchestrator.ledger import proof
from orchestrator.ledger.common import AUDIT_LOCK_KEY, REQUEST_STATUSES, TERMINAL_REQUEST, among, now
from orchestrator.ledger.models import AuditCheckpoint, AuditEntry, Request

# Session.info keys; each belongs to one transaction (proof.track_rows forgets them at its end).
TIPS = "lethe_chain_tips"  # chain -> (seq, hash) of its last entry, read under the chain's lock
OPENED = "lethe_chains_opened"  # request chains this transaction starts: named on the ledger's chain
DUE = "lethe_heads_due"  # entries to sign at commit, once the database has given them their ids
LAST = "lethe_last_entry"
TRANSACTION_KEYS = (TIPS, OPENED, DUE, LAST)

SIGNED_ACTIONS = ("certificate.issued",)  # besides every HEAD_EVERY-th entry of a chain

# The lock of a request's chain is the request's row. The tip is read by a statement of its own, after the
# lock is granted: a statement that waited for a row lock still reads other tables as of its start, so a tip
# read with the lock would miss what the writer before committed (and reuse its seq).
_LOCK_REQUEST = text("SELECT 1 FROM requests WHERE id = :chain FOR UPDATE")


def append(s: Session, action: str, request_id: str | None, task_id: str | None = None, actor: str = "worker",
           detail: dict[str, Any] | None = None, chain: str | None = None) -> AuditEntry:
    """Append an entry to its chain (``chain``, else its request's, else the ledger's) and return it; its
    hash is final at once (event ids and certificates are made from it in the same transaction)."""
    chain = chain or request_id or proof.LEDGER_CHAIN
    tips: dict[str, tuple[int, str]] = s.info.setdefault(TIPS, {})
    if chain not in tips:
        tips[chain] = _tip(s, chain)
    seq, prev_hash = tips[chain]
    entry = AuditEntry(chain=chain, seq=seq + 1, at=now(), request_id=request_id, task_id=task_id, actor=actor,
                       action=action, detail=detail or {}, prev_hash=prev_hash)
    entry.hash = proof.audit_hash(entry)
    s.add(entry)
    tips[chain] = (entry.seq, entry.hash)
    s.info[LAST] = entry
    if entry.seq % proof.HEAD_EVERY == 0 or action in SIGNED_ACTIONS:
        sign_at_commit(s, entry)
    return entry


def read_locked_tips(s: Session, request_ids: set[str]) -> None:
    """The tips of these requests' chains, in one statement, for a transaction that has just locked their
    rows (``LedgerCore._lock_requests``): appending to them then takes neither a second lock nor a read of
    its own, and the entries of a whole batch go in one INSERT at flush instead of one per request (each
    read of its own flushed what was pending first). A separate statement after the lock, for the reason
    ``_LOCK_REQUEST`` gives. A chain with no entry yet is left to ``_tip``."""
    tips: dict[str, tuple[int, str]] = s.info.setdefault(TIPS, {})
    wanted = request_ids - tips.keys()
    if not wanted:
        return
    for _, hash_, chain, seq in s.execute(chain_tips(among(s, AuditEntry.chain, wanted))):
        tips[chain] = (seq, hash_)


def chain_tips(*where: Any) -> Select[int, str, str, int]:
    """(id, hash, chain, seq) of the last entry of each chain among the entries ``where`` selects."""
    last = (select(AuditEntry.chain, func.max(AuditEntry.seq).label("seq")).where(*where)
            .group_by(AuditEntry.chain).subquery())
    return select(AuditEntry.id, AuditEntry.hash, AuditEntry.chain, AuditEntry.seq).join(
        last, (AuditEntry.chain == last.c.chain) & (AuditEntry.seq == last.c.seq))


def open_chain(s: Session, chain: str) -> None:
    """The chain of a request this transaction files: nothing can be on it yet, and no one else can know the
    request's id before the commit, so there is nothing to read or lock."""
    s.info.setdefault(TIPS, {})[chain] = (0, proof.GENESIS_HASH)
    s.info.setdefault(OPENED, set()).add(chain)


def open_old_chains(s: Session) -> None:
    """At a ledger's start, the chains of the requests in flight across migration 0010 (their entries so far
    on the ledger's chain), opened together in one entry, with a first entry on each; on an upgraded ledger
    it is one query (every request filed since has a chain), by the status index and the chains' index.

    Opened here, not at each one's next write (``_tip``'s lazy opening, now only the safety net for a
    request busy at this moment, or a finished one written again): that one takes the ledger chain's lock
    at commit while holding the request's row, the reverse of what the ledger's own writers (releasing a
    hold, pruning) do, so the two could deadlock. Here the ledger chain's lock comes first, and rows another
    transaction holds are skipped, never waited for. Finished requests are left as they are: nothing writes
    to them, and an opening would keep the entries before it from being pruned (``ChainLedger.prune``)."""
    # A probe of the chains' index per request (a subquery with LIMIT is never made a join over all entries).
    first = select(AuditEntry.seq).where(AuditEntry.chain == Request.id).limit(1).scalar_subquery()
    unopened = select(Request.id).where(Request.status.in_(sorted(set(REQUEST_STATUSES) - TERMINAL_REQUEST)),
                                        first.is_(None))
    if s.scalar(unopened.limit(1)) is None:
        return
    lock_ledger_chain(s)  # another host starting now waits here, then finds what this one opened
    for request_id in s.scalars(unopened.order_by(Request.id).with_for_update(skip_locked=True)).all():
        append(s, "chain.adopted", request_id, actor="ledger", detail={"before": proof.LEDGER_CHAIN})
    sign_at_commit(s)


def sign_at_commit(s: Session, entry: AuditEntry | None = None) -> None:
    """Sign this entry (by default the last one appended) when the transaction commits."""
    entry = entry if entry is not None else s.info.get(LAST)
    if entry is not None:
        s.info.setdefault(DUE, []).append(entry)


def at_commit(s: Session, rows: dict[str, dict[str, str | None]], signing_key: Ed25519PrivateKey) -> None:
    """What every transaction ends with, before its commit: the changed protected rows on each one's chain
    (``proof.track_rows``), in chain order (so two transactions lock chains in the same order), the chains it
    opened named on the ledger's chain, and the signed heads it owes."""
    for chain in sorted(rows):
        append(s, "rows.changed", None, actor="ledger", detail={"rows": rows[chain]}, chain=chain)
    opened = s.info.pop(OPENED, None)
    if opened:
        append(s, proof.OPENING, None, actor="ledger", detail={"chains": sorted(opened)})
    due: list[AuditEntry] | None = s.info.pop(DUE, None)
    if due:
        s.flush()  # the database gives each entry its id, which its signed head names
        for entry in due:
            proof.sign_head(s, signing_key, entry.id, entry.hash)


def lock_ledger_chain(s: Session) -> None:
    """The ledger chain's lock, for a transaction that must hold it from its start (pruning, rotating keys,
    signing heads). Others take it at their first entry on that chain."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})


def _tip(s: Session, chain: str) -> tuple[int, str]:
    """(seq, hash) of the chain's last entry, read under the chain's lock (held to commit). SQLite needs no
    lock: every transaction there is BEGIN IMMEDIATE, so one writes at a time."""
    if chain == proof.LEDGER_CHAIN:
        lock_ledger_chain(s)
    elif s.get_bind().dialect.name == "postgresql":
        s.execute(_LOCK_REQUEST, {"chain": chain})
    found = s.execute(select(AuditEntry.seq, AuditEntry.hash).where(AuditEntry.chain == chain)
                      .order_by(AuditEntry.seq.desc()).limit(1)).first()
    if found is not None:
        return found[0], found[1]
    if chain == proof.LEDGER_CHAIN:  # empty, or pruned whole: it goes on from the checkpoint
        checkpoint = s.get(AuditCheckpoint, 1)
        return (checkpoint.last_pruned_id, checkpoint.last_pruned_hash) if checkpoint else (0, proof.GENESIS_HASH)
    # A request filed before its chain existed (migration 0010) starts one now: named as any other.
    s.info.setdefault(OPENED, set()).add(chain)
    return 0, proof.GENESIS_HASH
