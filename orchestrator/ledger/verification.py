"""``lethe verify-ledger``: the walk over everything ``proof`` keeps, naming every problem found.

The chains are walked in ``id`` order (each chain's entries are in ``seq`` order in it, which the walk
enforces); what one entry proves about rows, approvals, maps, records and certificates is checked against
the tables once the walk is done.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import certificates, keys
from orchestrator.ledger import snapshots
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    Certificate,
    CompletionRecord,
    DataMapSnapshot,
    LedgerIdentity,
    Request,
    SignedHead,
)
from orchestrator.ledger.proof import (
    GENESIS_HASH,
    HEAD_EVERY,
    LEDGER_CHAIN,
    OPENING,
    PROTECTED,
    PRUNED_WITH_REQUEST,
    ROLLUP,
    ROW_ACTIONS,
    WAS,
    apply_rows,
    audit_hash,
    checkpoint_body,
    head_body,
    record_detail,
    row_digest,
    row_key,
)


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
