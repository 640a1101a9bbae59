"""Reads: status objects, lists, counts, ids, audit trails; nothing here writes."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.certificates import rfc3339
from orchestrator.copies import NO_COPY, Copy, gone_by
from orchestrator.ledger import snapshots
from orchestrator.ledger.common import (
    ID_PREFIX_MIN,
    REQUEST_STATUSES,
    SHORT_ID_MIN,
    TERMINAL_REQUEST,
    LedgerError,
    UnknownRequest,
    now,
    shared_prefix,
)
from orchestrator.ledger.core import LedgerCore
from orchestrator.ledger.models import (
    AuditEntry,
    CompletionRecord,
    Request,
    Task,
    Tombstone,
)
from orchestrator.times import to_utc


class ReadLedger(LedgerCore):
    def status(self, request_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            request = self._request(s, request_id)
            return status_object(request, self._tasks(s, request_id), **self._copies_of(s, [request])[request.id])

    def not_dispatched_count(self, request_ids: Sequence[str]) -> int:
        """How many tasks of these requests are on record as not dispatched (a bulk erasure's warning)."""
        count = 0
        with self.sessions() as s:
            for start in range(0, len(request_ids), 10_000):
                count += s.scalar(select(func.count()).select_from(Task).where(
                    Task.request_id.in_(request_ids[start:start + 10_000]), Task.not_dispatched_at.is_not(None))) or 0
        return count

    def resolve_request_id(self, given: str) -> str:
        """The id of the request ``given`` names: its whole id or, as git takes commits, any unique prefix of
        at least ID_PREFIX_MIN characters. Raises UnknownRequest, or LedgerError saying how many it matches."""
        prefix = given.strip().lower()
        if len(prefix) < ID_PREFIX_MIN or len(prefix) > 36 or prefix.strip("0123456789abcdef-"):
            raise UnknownRequest(f"no request with id {given[:40]!r} (give the id, or {ID_PREFIX_MIN} or more "
                                 "of its first characters)")
        with self.sessions() as s:
            found = s.scalars(select(Request.id).where(Request.id.like(prefix + "%")).limit(100)).all()
        if not found:
            raise UnknownRequest(f"no request with id {given!r}")
        if len(found) > 1:
            raise LedgerError(f"id prefix {given!r} matches {len(found)}{'+' if len(found) == 100 else ''} "
                              "requests: give more characters")
        return found[0]

    def short_ids(self, request_ids: Collection[str]) -> dict[str, str]:
        """Each id's shortest prefix of at least SHORT_ID_MIN characters no other request shares (it is
        taken back by ``resolve_request_id``)."""
        heads = {rid[:SHORT_ID_MIN] for rid in request_ids}
        with self.sessions() as s:
            near = s.scalars(select(Request.id).where(func.substr(Request.id, 1, SHORT_ID_MIN).in_(heads))).all()
        short = {}
        for rid in request_ids:
            others = [o for o in near if o != rid and o[:SHORT_ID_MIN] == rid[:SHORT_ID_MIN]]
            short[rid] = rid[:max([SHORT_ID_MIN, *(shared_prefix(rid, o) + 1 for o in others)])]
        return short

    def status_counts(self, request_ids: Sequence[str]) -> dict[str, int]:
        """How many of these requests are in each status (a bulk erasure's progress)."""
        counts: dict[str, int] = {}
        with self.sessions() as s:
            for start in range(0, len(request_ids), 10_000):
                for status, n in s.execute(select(Request.status, func.count()).where(
                        Request.id.in_(request_ids[start:start + 10_000])).group_by(Request.status)):
                    counts[status] = counts.get(status, 0) + n
        return counts

    def list_requests(self, status: str | None = None, overdue: bool = False, limit: int = 100,
             cursor: str | None = None, requested_by: str | None = None) -> dict[str, Any]:
        """Newest first; ``cursor`` is the opaque ``next`` of the previous page; ``requested_by``: only the
        requests filed under that API token name."""
        if status and status not in REQUEST_STATUSES:
            raise LedgerError(f"unknown status {status[:40]!r} (one of: {', '.join(REQUEST_STATUSES)})")
        with self.sessions() as s:
            query = select(Request).order_by(Request.received_at.desc(), Request.id.desc())
            if requested_by is not None:
                query = query.where(Request.requested_by == requested_by)
            if status:
                query = query.where(Request.status == status)
            if overdue:
                query = query.where(Request.due_at < now(), Request.status.notin_(TERMINAL_REQUEST))
            if cursor:
                at, rid = _decode_cursor(cursor)
                query = query.where((Request.received_at < at)
                                    | ((Request.received_at == at) & (Request.id < rid)))
            rows = s.scalars(query.limit(limit + 1)).all()
            page = rows[:limit]
            tasks = self._tasks_of(s, [r.id for r in page])
            copies = self._copies_of(s, page)
            items = [status_object(r, tasks[r.id], **copies[r.id]) for r in page]
            nxt = _encode_cursor(page[-1]) if len(rows) > limit else None
            return {"items": items, "next": nxt}

    def statuses(self, request_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The status object of each of these requests, in order."""
        return [self.status(request_id) for request_id in request_ids]

    def audit_trail(self, request_id: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            self._request(s, request_id)
            rows = s.scalars(select(AuditEntry).where(AuditEntry.request_id == request_id)
                             .order_by(AuditEntry.id)).all()
            return [{"at": rfc3339(e.at), "actor": e.actor, "action": e.action, "task_id": e.task_id,
                     "detail": e.detail} for e in rows]

    def completion_record_count(self, request_id: str) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(CompletionRecord)
                            .where(CompletionRecord.request_id == request_id)) or 0

    def _copies_of(self, s: Session, requests: Sequence[Request]) -> dict[str, dict[str, Any]]:
        """Request id -> what its status object needs to date ``gone_by``: when each of its targets was
        verified (its completion records) and the copies its map declares (None when the stored map cannot
        be read: then nothing is dated)."""
        found: dict[str, dict[str, Any]] = {r.id: {"verified": {}, "copies": None} for r in requests}
        real = [r.id for r in requests if not r.dry_run]
        for start in range(0, len(real), 10_000):
            for request_id, target, at in s.execute(select(
                    CompletionRecord.request_id, CompletionRecord.target, CompletionRecord.verified_at)
                    .where(CompletionRecord.request_id.in_(real[start:start + 10_000]))):
                found[request_id]["verified"][target] = at
        for r in requests:
            with suppress(LedgerError):  # a map changed in the database after filing: gone_by stays null
                found[r.id]["copies"] = snapshots.copies(self.map_text(r.data_map_digest, s))
        return found

    # -- events ---------------------------------------------------------------------------------------
    def tombstones_of(self, subject_hashes: Iterable[str], days: int) -> dict[str, str]:
        """Which of these keyed hashes a completed request erased within ``days``: hash -> the id of the
        latest such request, newest first. A data_written event re-erases only these identifiers."""
        return self.tombstoned_since(subject_hashes, now() - timedelta(days=days))

    def tombstoned_since(self, subject_hashes: Iterable[str], since: datetime) -> dict[str, str]:
        """Which of these keyed hashes a completed request erased at or after ``since``: hash -> the id of the
        latest such request, newest first. ``lethe replay`` and the resurrection watch re-erase only these."""
        with self.sessions() as s:
            rows = s.execute(select(Tombstone.subject_hash, Tombstone.request_id).where(
                Tombstone.subject_hash.in_(list(subject_hashes)), Tombstone.erased_at >= to_utc(since),
            ).order_by(Tombstone.erased_at.desc(), Tombstone.id.desc())).all()
        latest: dict[str, str] = {}
        for subject_hash, request_id in rows:
            latest.setdefault(subject_hash, request_id)
        return latest  # newest first

    def request_by_idempotency_key(self, stored_key: str) -> str | None:
        """The request filed under a stored idempotency key (see ``stored_idempotency_key``), if any."""
        with self.sessions() as s:
            return s.scalar(select(Request.id).where(Request.idempotency_key == stored_key))


def status_object(request: Request, tasks: Iterable[Task], verified: Mapping[str, datetime] | None = None,
                  copies: Mapping[str, Copy] | None = None) -> dict[str, Any]:
    """The SPEC's status object. ``gone_by`` (orchestrator/copies.py) is dated from the targets' completion
    records (``verified``) and the map's ``copies``: per target once it and its replicas are erased, for the
    request once it completed; null without them and for a dry run, which erases nothing."""
    tasks = list(tasks)
    verified = verified or {}
    gone, request_gone = gone_by([(t.target, verified.get(t.target)) for t in tasks], copies or {})
    if copies is None:
        gone, request_gone = dict.fromkeys(gone), None
    return {
        "id": request.id,
        "scope": request.scope,
        "dataset": request.dataset,
        "status": request.status,
        "dry_run": request.dry_run,
        "regime": request.regime,
        "received_at": rfc3339(request.received_at),
        "due_at": rfc3339(request.due_at),
        "completed_at": rfc3339(request.completed_at),
        "subject_hashes": request.subject_hashes,
        "derived": request.derived_hashes or [],  # identifiers the map's identities resolved, as hashes
        "data_map_digest": request.data_map_digest,
        "requested_by": request.requested_by,
        # Tasks whose hand-off to the broker failed: reconcile sends them on its next pass (SPEC).
        "not_dispatched": sum(1 for t in tasks if t.not_dispatched_at is not None),
        "gone_by": rfc3339(request_gone) if request.status == "completed" else None,
        "tasks": [
            {
                "target": t.target,
                "kind": t.kind,
                "status": t.status,
                "deleted": t.deleted,
                "residue": t.residue,
                "attempts": t.attempts,
                "error": t.error,
                "reason": t.reason,
                "level": t.level,
                "progress": {"done": t.progress_done, "estimated": t.progress_estimated}
                if t.progress_done is not None or t.progress_estimated is not None else None,
                "after": list(t.after),
                "not_dispatched_at": rfc3339(t.not_dispatched_at),
                "gone_by": rfc3339(gone[t.target]),
                "replica_of": (copies or {}).get(t.target, NO_COPY).replica_of,
            }
            for t in tasks
        ],
    }


def _encode_cursor(request: Request) -> str:
    raw = f"{request.received_at.isoformat()}|{request.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _split_cursor(cursor: str) -> tuple[datetime, str]:
    """The time and request id a cursor carries; ValueError or UnicodeDecodeError when it carries none."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    at, rid = raw.split("|", 1)
    uuid.UUID(rid)
    return datetime.fromisoformat(at), rid


def valid_cursor(cursor: str) -> bool:
    """True when ``cursor`` is one the ledger could have made (base64 of an aware time and a request id).

    Checked before the ledger sees it: a naive time or an id with a NUL would reach the database."""
    try:
        when, rid = _split_cursor(cursor)
    except (ValueError, UnicodeDecodeError):
        return False
    return when.tzinfo is not None and len(rid) == 36


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        when, rid = _split_cursor(cursor)
        if when.tzinfo is None:
            raise LedgerError("bad cursor")
        return to_utc(when), rid  # a forged cursor past the UTC range is refused (InvalidTime), not a 500
    except (ValueError, UnicodeDecodeError):
        raise LedgerError("bad cursor") from None
