"""The proof a ledger keeps of itself, and the walk that checks it (``lethe verify-ledger``).

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

from orchestrator import certificates, keys
from orchestrator.certificates import rfc3339
from orchestrator.ledger import snapshots
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    Base,
    Certificate,
    CompletionRecord,
    DataMapSnapshot,
    Hold,
    LedgerIdentity,
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


def approved_count(s: Session, task: Task) -> int | None:
    """The count an admin approved for this task, as the audit chain records it (the newest
    ``request.approved`` entry of its request naming its target), or None when none did. What a claim must
    read, not the task row's ``approved_items``, which anyone with write access to the database can set."""
    split = (select(func.min(AuditEntry.seq)).where(AuditEntry.chain == LEDGER_CHAIN, AuditEntry.action == OPENING)
             .scalar_subquery())
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


# -- verification -----------------------------------------------------------------------------------------
def verify(s: Session) -> list[str]:
    """Every problem found, in order: the first names the first bad entry (or row). Empty: intact."""
    public = {k.key_id: k.public_key for k in keys.known_keys(s)}
    problems = keys.history_problems(s)
    identity = s.get(LedgerIdentity, 1)
    heads_from = 0
    if identity is None:
        problems.append("ledger identity: removed (migration 0006 writes it)")
    else:
        heads_from = identity.heads_from
        if identity.subject_key_fingerprint is None and public:
            problems.append("ledger identity: its subject key fingerprint was removed (hosts refuse to open it)")
        elif identity.subject_key_fingerprint is not None and not certificates.signature_valid(
                keys.identity_body(identity), identity.signature, public.get(identity.key_id or "")):
            problems.append("ledger identity: changed (its signature fails)")
    checkpoint = s.get(AuditCheckpoint, 1)
    # chain -> (seq, hash) of its last entry so far; the ledger chain starts where pruning left it
    tips: dict[str, tuple[int, str]] = {LEDGER_CHAIN: (0, GENESIS_HASH)}
    if checkpoint is not None:
        tips[LEDGER_CHAIN] = (checkpoint.last_pruned_id, checkpoint.last_pruned_hash)
        if not certificates.signature_valid(checkpoint_body(checkpoint), checkpoint.signature,
                                            public.get(checkpoint.key_id or "")):
            problems.append(f"audit checkpoint (entries 1..{checkpoint.last_pruned_id} pruned): not signed by the "
                            "ledger's key: forged or changed, so the oldest entries may have been removed")
    heads = {h.entry_id: h for h in s.scalars(select(SignedHead))}
    opened: set[str] = set()  # request chains the ledger's chain says were opened
    reached: dict[str, tuple[int, str, int]] = {}  # chain -> (seq, hash, roll-up entry) the ledger's chain saw
    expected_records: dict[tuple[str, str], dict[str, Any]] = {}
    certified: dict[str, str] = {}  # request id -> sha256 of the certificate the chain recorded
    chain_hashes: set[str] = set()
    with_entries: set[str] = set()  # requests the chain still has entries of (not pruned)
    rows: dict[str, str | None] = {}
    maps: dict[str, str] = {}  # request id -> digest of the map it was planned from (the chain's word)
    approved: set[tuple[str, str]] = set()  # (request id, target) an admin approved, so far in the chain
    over: list[tuple[int, str, str, int]] = []  # completions without approval: (entry, request, target, deleted)
    for entry in s.scalars(select(AuditEntry).order_by(AuditEntry.id).execution_options(yield_per=1000)):
        where = f"audit entry {entry.id} ({entry.action})"
        prev_seq, prev_hash = tips.get(entry.chain, (0, GENESIS_HASH))
        of = "" if entry.chain == LEDGER_CHAIN else f" of request {entry.chain}'s chain"
        if entry.seq > prev_seq + 1:
            problems.append(f"{where}: entries {prev_seq + 1}..{entry.seq - 1}{of} are missing")
        elif entry.seq <= prev_seq:
            problems.append(f"{where}: position {entry.seq}{of} comes after position {prev_seq} (reordered, "
                            "or the chain's start moved)")
        if entry.prev_hash != prev_hash:
            problems.append(f"{where}: does not follow the entry before it (removed or reordered)")
        if audit_hash(entry) != entry.hash:
            problems.append(f"{where}: its content was changed")
        if entry.chain != LEDGER_CHAIN and entry.request_id not in (None, entry.chain):
            problems.append(f"{where}: names request {entry.request_id} but is on request {entry.chain}'s chain")
        elif entry.chain == LEDGER_CHAIN and opened and (entry.request_id or entry.task_id):
            # Once request chains exist, a request's entries are on its own chain; one on the ledger's would
            # speak for a request (an approval, a completion) where no head of that request covers it.
            problems.append(f"{where}: names a request but is on the ledger's chain, after request chains began")
        head = heads.pop(entry.id, None)
        if head is not None and head.hash != entry.hash:
            problems.append(f"{where}: not the entry its signed head covers: the chain up to it was rewritten")
        elif head is None and entry.id > heads_from and (entry.seq % HEAD_EVERY == 0
                                                         or entry.action == "certificate.issued"):
            problems.append(f"{where}: its signed head was removed (the chain may have been rewritten)")
        elif head is not None and not certificates.signature_valid(head_body(head), head.signature,
                                                                    public.get(head.key_id)):
            problems.append(f"{where}: its signed head has a bad signature")
        tips[entry.chain] = (entry.seq, entry.hash)
        chain_hashes.add(entry.hash)
        if entry.action == OPENING and entry.chain == LEDGER_CHAIN:
            opened.update(entry.detail.get("chains") or [])
        if entry.action == ROLLUP and entry.chain == LEDGER_CHAIN:
            for chain, (seq, tip_hash) in (entry.detail.get("tips") or {}).items():
                if seq >= reached.get(chain, (0, "", 0))[0]:
                    reached[chain] = (seq, tip_hash, entry.id)
        if entry.request_id:
            with_entries.add(entry.request_id)
        if entry.task_id:
            with_entries.add(entry.task_id)
        if entry.action in ROW_ACTIONS:
            problems += _changed_before(rows, entry)
            apply_rows(rows, entry.detail)
        if entry.action == "request.received":
            maps[entry.request_id or ""] = entry.detail.get("data_map_digest", "")
        if entry.action == "request.approved":
            approved.update((entry.request_id or "", target) for target in entry.detail.get("targets") or [])
        if entry.action == "task.completed" and not entry.detail.get("dry_run"):
            d = entry.detail
            if (entry.request_id or "", d.get("target", "")) not in approved:
                over.append((entry.id, entry.request_id or "", d.get("target", ""), int(d.get("deleted") or 0)))
            expected_records[(entry.request_id or "", d.get("target", ""))] = {
                k: d.get(k) for k in ("target", "deleted", "residue", "level", "verified_at")}
        if entry.action == "certificate.issued":
            certified[entry.request_id or ""] = entry.detail.get("sha256", "")
    for entry_id in sorted(heads):  # pruning removes an entry's head with it: any left names a removed entry
        problems.append(f"audit entry {entry_id}: removed (a signed head covers it)")
    problems += _chain_problems(set(tips) - {LEDGER_CHAIN}, opened)
    for chain, (seq, tip_hash, rollup) in sorted(reached.items()):
        if chain in tips and (tips[chain][0] < seq or tip_hash not in chain_hashes):
            problems.append(f"request {chain}'s audit chain: cut back or rewritten behind position {seq}, which "
                            f"the ledger's chain recorded (audit entry {rollup})")
    problems += _row_problems(s, rows, with_entries)
    problems += _map_problems(s, maps, over)
    problems += _record_problems(s, expected_records)
    problems += _certificate_problems(s, certified, chain_hashes, public)
    return problems


def _chain_problems(chains: set[str], opened: set[str]) -> list[str]:
    """Every request chain must be one the ledger's chain opened, and every chain it opened must be there:
    so a whole request's chain made up, or removed with its request, shows. (Pruning removes a chain with
    the ledger entry that opened it.)"""
    return ([f"request {c}'s audit chain: not opened on the ledger's chain (written outside lethe)"
             for c in sorted(chains - opened)]
            + [f"request {c}'s audit chain: removed (the ledger's chain opened it)" for c in sorted(opened - chains)])


def _row_problems(s: Session, expected: dict[str, str | None], with_entries: set[str]) -> list[str]:
    problems = []
    for model, (table, _) in PROTECTED.items():
        for row in s.scalars(select(model).order_by(model.id).execution_options(yield_per=1000)):  # type: ignore[attr-defined]
            key = row_key(row)
            if key not in expected:
                problems.append(f"{table} {row.id}: not in the audit chain (written outside lethe)")  # type: ignore[attr-defined]
            elif expected.pop(key) != row_digest(row):
                problems.append(f"{table} {row.id}: changed outside the audit chain")  # type: ignore[attr-defined]
    for key, digest in expected.items():
        table, _, row_id = key.partition(":")
        if digest is not None and (table not in PRUNED_WITH_REQUEST or row_id in with_entries):
            problems.append(f"{table} {row_id}: removed outside the audit chain")
    return problems


def _changed_before(expected: dict[str, str | None], entry: AuditEntry) -> list[str]:
    """A change that did not start from the row the chain last recorded: the row was edited in between."""
    problems = []
    for key, was in (entry.detail.get("rows") or {}).items():
        if key.startswith(WAS) and expected.get(key[len(WAS):], was) != was:
            table, _, row_id = key[len(WAS):].partition(":")
            problems.append(f"{table} {row_id}: changed outside the audit chain (before audit entry {entry.id})")
    return problems


def _map_problems(s: Session, maps: dict[str, str], over: list[tuple[int, str, str, int]]) -> list[str]:
    """Each stored map must be the text its digest names; and a completion that deleted more than its
    target's max_items must follow an admin's approval on the chain."""
    problems, limits = [], {}
    for snap in s.scalars(select(DataMapSnapshot).order_by(DataMapSnapshot.digest)):
        if not snapshots.text_matches(snap.text, snap.digest):
            problems.append(f"data map {snap.digest[:12]}: its text was changed (it no longer has this digest)")
        else:
            limits[snap.digest] = snapshots.max_items(snap.text)
    for entry_id, request_id, target, deleted in over:
        digest = maps.get(request_id) or s.scalar(select(Request.data_map_digest)
                                                   .where(Request.id == request_id)) or ""
        if target not in limits.get(digest, {}):
            continue  # the map is missing or changed: named above, or by the request's row
        limit = limits[digest][target]
        if deleted > limit:
            problems.append(f"completion record {request_id}/{target}: {deleted} items deleted, over max_items "
                            f"{limit}, with no approval on the audit chain (audit entry {entry_id})")
    return problems


def _record_problems(s: Session, expected: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    problems = []
    for record in s.scalars(select(CompletionRecord).order_by(CompletionRecord.id)):
        recorded = expected.pop((record.request_id, record.target), None)
        where = f"completion record {record.request_id}/{record.target}"
        if recorded is None:
            problems.append(f"{where}: not in the audit chain")
        elif record_detail(record) != recorded:
            problems.append(f"{where}: differs from the audit chain")
    for request_id, target in expected:
        if s.get(Request, request_id) is not None:
            problems.append(f"completion record {request_id}/{target}: removed")
    return problems


def _certificate_problems(s: Session, certified: dict[str, str], chain_hashes: set[str],
                          public: dict[str, Any]) -> list[str]:
    problems = []
    first_key = next(iter(public.values()), None)
    for cert in s.scalars(select(Certificate)):
        where = f"certificate {cert.request_id}"
        try:
            body = certificates.parse_certificate(cert.body.encode())
        except certificates.CertificateError as exc:
            problems.append(f"{where}: {exc}")
            continue
        # Certificates issued before they named their key were signed by the ledger's first key.
        if not certificates.verify(body, public.get(body["key_id"]) if "key_id" in body else first_key):
            problems.append(f"{where}: bad signature")
        elif certified.pop(cert.request_id, None) != certificates.sha256_hex(body):
            problems.append(f"{where}: not the one the audit chain recorded")
        elif body.get("audit_head") not in chain_hashes:
            problems.append(f"{where}: its audit_head is not in the chain")
    for request_id in certified:
        if s.get(Request, request_id) is not None:
            problems.append(f"certificate {request_id}: removed")
    return problems


def record_detail(record: CompletionRecord) -> dict[str, Any]:
    return {"target": record.target, "deleted": record.deleted, "residue": record.residue,
            "level": record.level, "verified_at": rfc3339(record.verified_at)}
