"""The ledger's operations. Every state change of a request or task happens here, in one transaction.

Methods that make work runnable return the ``Dispatch`` list to hand to the broker: callers send them only
after the transaction committed, so a message never names a task the ledger does not have. A message that
is lost (broker restart, crash before send) is sent again by ``due_for_dispatch`` once its lease runs out.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.datamap import DataMap
from orchestrator.identifiers import Subject
from orchestrator.ledger.db import make_engine, migrate, session_factory
from orchestrator.ledger.models import AuditEntry, CompletionRecord, DataMapSnapshot, Request, Task
from orchestrator.planner import plan

TERMINAL_TASK = frozenset({"completed", "failed", "skipped"})
DONE_TASK = frozenset({"completed", "skipped"})  # satisfies `after`
TERMINAL_REQUEST = frozenset({"completed", "failed", "cancelled"})
REGIMES = {"gdpr", "ccpa"}


class LedgerError(Exception):
    """A request the ledger refuses; the message is safe to show the user."""


class UnknownRequest(LedgerError):
    pass


class IdempotencyConflict(LedgerError):
    pass


@dataclass(frozen=True)
class Dispatch:
    """A task to hand to the broker: the message carries only the id."""

    task_id: str
    kind: str


@dataclass(frozen=True)
class TaskRun:
    """What a worker needs to run one task, read from the ledger when it claims the task."""

    task_id: str
    request_id: str
    target: str
    kind: str
    attempt: int
    dry_run: bool
    subject: Subject
    data_map_digest: str


def now() -> datetime:
    return datetime.now(UTC)


def due_date(received: datetime, regime: str) -> datetime:
    """GDPR Art. 12(3): one calendar month; CCPA: 45 days."""
    if regime == "ccpa":
        return received + timedelta(days=45)
    year, month = (received.year + 1, 1) if received.month == 12 else (received.year, received.month + 1)
    day = min(received.day, calendar.monthrange(year, month)[1])
    return received.replace(year=year, month=month, day=day)


def rfc3339(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


class Ledger:
    def __init__(self, database_url: str, subject_key: bytes, lease_seconds: int = 600):
        self.engine: Engine = make_engine(database_url)
        migrate(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.subject_key = subject_key
        self.lease = timedelta(seconds=lease_seconds)
        seal_key = hmac.new(subject_key, b"lethe/seal/v1", hashlib.sha256).digest()
        self._aead = AESGCM(seal_key)
        self._maps: dict[str, DataMap] = {}

    # -- sealing raw identifiers while a request runs -----------------------------------------------
    def _seal(self, request_id: str, subject: Subject) -> bytes:
        nonce = os.urandom(12)
        plain = json.dumps(dict(subject), sort_keys=True).encode()
        return nonce + self._aead.encrypt(nonce, plain, request_id.encode())

    def _unseal(self, request_id: str, sealed: bytes) -> Subject:
        plain = self._aead.decrypt(sealed[:12], sealed[12:], request_id.encode())
        return Subject(json.loads(plain))

    # -- intake -------------------------------------------------------------------------------------
    def file_request(
        self,
        datamap: DataMap,
        subject: Subject,
        *,
        dry_run: bool = False,
        regime: str = "gdpr",
        idempotency_key: str | None = None,
        actor: str = "cli",
    ) -> tuple[str, bool, list[Dispatch]]:
        """Record a request and plan its tasks. Returns (id, created, dispatches).

        A replay with the same idempotency key and the same request returns the first one (created False);
        the same key with a different request raises IdempotencyConflict.
        """
        if regime not in REGIMES:
            raise LedgerError(f"unknown regime {regime!r} (gdpr or ccpa)")
        hashes = subject.hashes(self.subject_key)
        digest = hashlib.sha256(
            json.dumps({"subject": hashes, "dry_run": dry_run, "regime": regime}, sort_keys=True).encode()
        ).hexdigest()
        if idempotency_key is not None:
            existing = self._replay(idempotency_key, digest)
            if existing:
                return existing, False, []
        request_id = str(uuid.uuid4())
        received = now()
        try:
            with self.sessions.begin() as s:
                if s.get(DataMapSnapshot, datamap.digest) is None:
                    s.add(DataMapSnapshot(digest=datamap.digest, text=datamap.text, created_at=received))
                    s.flush()
                request = Request(
                    id=request_id,
                    scope="subject",
                    status="planned",
                    dry_run=dry_run,
                    regime=regime,
                    received_at=received,
                    due_at=due_date(received, regime),
                    data_map_digest=datamap.digest,
                    subject_hashes=hashes,
                    sealed_subject=self._seal(request_id, subject),
                    idempotency_key=idempotency_key,
                    idempotency_digest=digest if idempotency_key else None,
                    actor=actor,
                )
                s.add(request)
                self._audit(s, "request.received", request_id, actor=actor,
                            detail={"subject_hashes": hashes, "dry_run": dry_run, "regime": regime,
                                    "data_map_digest": datamap.digest})
                for p in plan(request_id, datamap, subject):
                    s.add(Task(id=p.id, request_id=request_id, target=p.target, kind=p.kind,
                               position=p.position, after=list(p.after), status=p.status, reason=p.reason,
                               attempts=0, finished_at=received if p.status == "skipped" else None))
                s.flush()
                self._audit(s, "request.planned", request_id, actor=actor,
                            detail={"targets": [t.target for t in self._tasks(s, request_id)]})
                dispatches = self._release_ready(s, request)
                self._refresh(s, request, actor=actor)
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = self._replay(idempotency_key, digest)  # lost a race with the same key
            if existing is None:
                raise
            return existing, False, []
        return request_id, True, dispatches

    def _replay(self, key: str, digest: str) -> str | None:
        with self.sessions() as s:
            row = s.scalars(select(Request).where(Request.idempotency_key == key)).first()
            if row is None:
                return None
            if row.idempotency_digest != digest:
                raise IdempotencyConflict("this idempotency key was already used for a different request")
            return row.id

    # -- workers ------------------------------------------------------------------------------------
    def claim(self, task_id: str) -> TaskRun | None:
        """Mark a task running and return what it needs, or None when there is nothing to do (finished,
        cancelled, waiting for `after`, or held)."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            if task is None or task.status in TERMINAL_TASK:
                return None
            request = s.get(Request, task.request_id, with_for_update=True)
            assert request is not None
            if request.status in TERMINAL_REQUEST or request.sealed_subject is None:
                return None
            if not self._after_done(s, task):
                return None
            at = now()
            task.status = "running"
            task.attempts += 1
            task.started_at = task.started_at or at
            task.lease_expires_at = at + self.lease
            task.error = None
            self._audit(s, "task.started", request.id, task.id, detail={"target": task.target,
                                                                        "attempt": task.attempts})
            self._refresh(s, request)
            return TaskRun(task.id, request.id, task.target, task.kind, task.attempts, request.dry_run,
                           self._unseal(request.id, request.sealed_subject), request.data_map_digest)

    def renew_lease(self, task_id: str) -> None:
        with self.sessions.begin() as s:
            task = s.get(Task, task_id)
            if task is not None and task.status == "running":
                task.lease_expires_at = now() + self.lease

    def complete(self, task_id: str, deleted: int, residue: int) -> list[Dispatch]:
        """A verified purge (residue 0): write the completion record once and release what waited on it.
        For a dry run, ``deleted`` is what would go and no record is written."""
        if residue:
            raise ValueError("a task with residue cannot complete")
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            assert task is not None
            request = s.get(Request, task.request_id, with_for_update=True)
            assert request is not None
            at = now()
            if not request.dry_run:
                recorded = s.scalars(select(CompletionRecord).where(
                    CompletionRecord.request_id == task.request_id, CompletionRecord.target == task.target
                )).first()
                if recorded is None:
                    s.add(CompletionRecord(request_id=task.request_id, target=task.target, task_id=task.id,
                                           deleted=deleted, residue=residue, verified_at=at))
                    s.flush()
                else:  # a redelivered or concurrent run: the first record stands
                    deleted, residue = recorded.deleted, recorded.residue
            if task.status != "completed":
                task.status, task.deleted, task.residue = "completed", deleted, residue
                task.error, task.finished_at, task.lease_expires_at = None, at, None
                self._audit(s, "task.completed", request.id, task.id,
                            detail={"target": task.target, "deleted": deleted, "residue": residue})
            dispatches = self._release_ready(s, request)
            self._refresh(s, request)
            return dispatches

    def fail(self, task_id: str, error: str, residue: int | None = None) -> None:
        """A permanent error, or retries exhausted: the task ends failed and keeps the (sanitised) error."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            assert task is not None
            request = s.get(Request, task.request_id, with_for_update=True)
            assert request is not None
            if task.status in TERMINAL_TASK:
                return
            task.status, task.error, task.finished_at, task.lease_expires_at = "failed", error, now(), None
            if residue is not None:
                task.residue = residue
            self._audit(s, "task.failed", request.id, task.id, detail={"target": task.target, "error": error})
            self._refresh(s, request)

    def note_retry(self, task_id: str, error: str, countdown: float) -> None:
        """A retryable error: the task stays running; its lease covers the backoff."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id)
            if task is not None and task.status == "running":
                task.error = error
                task.lease_expires_at = now() + self.lease + timedelta(seconds=countdown)
                self._audit(s, "task.retrying", task.request_id, task.id,
                            detail={"target": task.target, "error": error, "countdown": round(countdown, 1)})

    # -- operators ------------------------------------------------------------------------------------
    def retry(self, request_id: str, actor: str = "cli") -> list[Dispatch]:
        """Failed tasks back to pending; the request runs again."""
        with self.sessions.begin() as s:
            request = self._request(s, request_id, lock=True)
            if request.status == "cancelled":
                raise LedgerError("a cancelled request cannot be retried")
            failed = [t for t in self._tasks(s, request_id) if t.status == "failed"]
            if not failed:
                raise LedgerError("the request has no failed task to retry")
            for t in failed:
                t.status, t.error, t.finished_at = "pending", None, None
                t.lease_expires_at, t.dispatched_at = None, None
            request.status, request.completed_at = "running", None
            self._audit(s, "request.retried", request_id, actor=actor,
                        detail={"targets": [t.target for t in failed]})
            dispatches = self._release_ready(s, request)
            self._refresh(s, request, actor=actor)
            return dispatches

    def cancel(self, request_id: str, actor: str = "cli") -> None:
        """Only before execution: once any purge started, erasure runs to its end."""
        with self.sessions.begin() as s:
            request = self._request(s, request_id, lock=True)
            tasks = self._tasks(s, request_id)
            if request.status in TERMINAL_REQUEST or any(
                t.status not in ("pending", "skipped") or t.attempts for t in tasks
            ):
                raise LedgerError(f"request is {request.status} and has started; only a request that "
                                  "has not started executing can be cancelled")
            request.status, request.completed_at, request.sealed_subject = "cancelled", now(), None
            for t in tasks:
                if t.status == "pending":
                    t.status, t.reason, t.lease_expires_at = "skipped", "cancelled", None
            self._audit(s, "request.cancelled", request_id, actor=actor)

    def due_for_dispatch(self, limit: int = 1000) -> list[Dispatch]:
        """Non-terminal tasks whose lease ran out (or that were never sent): send them again."""
        at = now()
        with self.sessions.begin() as s:
            rows = s.scalars(
                select(Task)
                .join(Request, Request.id == Task.request_id)
                .where(Task.status.in_(("pending", "running")),
                       Request.status.notin_(TERMINAL_REQUEST),
                       (Task.lease_expires_at.is_(None)) | (Task.lease_expires_at < at))
                .order_by(Task.lease_expires_at)
                .limit(limit)
                .with_for_update(of=Task, skip_locked=True)
            ).all()
            dispatches = []
            for task in rows:
                if not self._after_done(s, task):
                    continue
                task.lease_expires_at, task.dispatched_at = at + self.lease, at
                dispatches.append(Dispatch(task.id, task.kind))
                self._audit(s, "task.redispatched", task.request_id, task.id, actor="reconcile",
                            detail={"target": task.target, "status": task.status})
            return dispatches

    # -- reading --------------------------------------------------------------------------------------
    def data_map(self, digest: str) -> DataMap:
        """The map a request was planned from (cached: snapshots never change)."""
        if digest not in self._maps:
            with self.sessions() as s:
                snap = s.get(DataMapSnapshot, digest)
                if snap is None:
                    raise LedgerError(f"data map {digest[:12]} is not in the ledger")
                self._maps[digest] = DataMap.parse(snap.text, source=f"data map {digest[:12]}")
        return self._maps[digest]

    def status(self, request_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            request = self._request(s, request_id)
            return status_object(request, self._tasks(s, request_id))

    def list_requests(self, status: str | None = None, overdue: bool = False, limit: int = 100,
             cursor: str | None = None) -> dict[str, Any]:
        """Newest first; ``cursor`` is the opaque ``next`` of the previous page."""
        with self.sessions() as s:
            query = select(Request).order_by(Request.received_at.desc(), Request.id.desc())
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
            tasks: dict[str, list[Task]] = {r.id: [] for r in page}
            if page:
                for t in s.scalars(select(Task).where(Task.request_id.in_(tasks)).order_by(Task.position)):
                    tasks[t.request_id].append(t)
            items = [status_object(r, tasks[r.id]) for r in page]
            nxt = _encode_cursor(page[-1]) if len(rows) > limit else None
            return {"items": items, "next": nxt}

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

    # -- internals ------------------------------------------------------------------------------------
    def _request(self, s: Session, request_id: str, lock: bool = False) -> Request:
        try:
            uuid.UUID(request_id)
        except ValueError:
            raise UnknownRequest(f"no request with id {request_id!r}") from None
        request = s.get(Request, request_id, with_for_update=lock)
        if request is None:
            raise UnknownRequest(f"no request with id {request_id!r}")
        return request

    @staticmethod
    def _tasks(s: Session, request_id: str) -> list[Task]:
        return list(s.scalars(select(Task).where(Task.request_id == request_id).order_by(Task.position)))

    def _after_done(self, s: Session, task: Task) -> bool:
        if not task.after:
            return True
        done = {t.target for t in self._tasks(s, task.request_id) if t.status in DONE_TASK}
        return set(task.after) <= done

    def _release_ready(self, s: Session, request: Request) -> list[Dispatch]:
        """Pending tasks whose `after` is satisfied and that were not sent yet get a lease and are sent."""
        if request.status in ("completed", "cancelled"):
            return []
        at = now()
        tasks = self._tasks(s, request.id)
        done = {t.target for t in tasks if t.status in DONE_TASK}
        dispatches = []
        for t in tasks:
            if t.status == "pending" and t.dispatched_at is None and set(t.after) <= done:
                t.dispatched_at, t.lease_expires_at = at, at + self.lease
                dispatches.append(Dispatch(t.id, t.kind))
        return dispatches

    def _refresh(self, s: Session, request: Request, actor: str = "worker") -> None:
        """Derive the request's status from its tasks: the ledger decides, not the broker."""
        if request.status == "cancelled":
            return
        tasks = self._tasks(s, request.id)
        statuses = [t.status for t in tasks]
        before = request.status
        if all(st in DONE_TASK for st in statuses):
            request.status = "completed"
        elif "failed" in statuses and not self._can_progress(tasks):
            request.status = "failed"
        elif any(t.status in ("running", "completed", "failed") or t.attempts for t in tasks):
            request.status = "running"
        else:
            request.status = "planned"
        if request.status == before:
            return
        if request.status in ("completed", "failed"):
            request.completed_at = now()
            self._audit(s, f"request.{request.status}", request.id, actor=actor,
                        detail={"tasks": {t.target: t.status for t in tasks}})
        if request.status == "completed":
            request.sealed_subject = None  # no raw identifier survives a completed request

    @staticmethod
    def _can_progress(tasks: Iterable[Task]) -> bool:
        """True while some task runs or could still run (pending with no failed task upstream)."""
        tasks = list(tasks)
        by_name = {t.target: t for t in tasks}

        def blocked(t: Task, seen: frozenset[str] = frozenset()) -> bool:
            for dep in t.after:
                d = by_name.get(dep)
                if d is None or dep in seen:
                    continue
                if d.status == "failed" or (d.status == "pending" and blocked(d, seen | {t.target})):
                    return True
            return False

        return any(t.status == "running" or (t.status == "pending" and not blocked(t)) for t in tasks)

    @staticmethod
    def _audit(s: Session, action: str, request_id: str | None, task_id: str | None = None,
               actor: str = "worker", detail: dict[str, Any] | None = None) -> None:
        s.add(AuditEntry(at=now(), request_id=request_id, task_id=task_id, actor=actor, action=action,
                         detail=detail or {}))


def status_object(request: Request, tasks: Iterable[Task]) -> dict[str, Any]:
    """The SPEC's status object."""
    return {
        "id": request.id,
        "scope": request.scope,
        "status": request.status,
        "dry_run": request.dry_run,
        "regime": request.regime,
        "received_at": rfc3339(request.received_at),
        "due_at": rfc3339(request.due_at),
        "completed_at": rfc3339(request.completed_at),
        "subject_hashes": request.subject_hashes,
        "data_map_digest": request.data_map_digest,
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
                "after": list(t.after),
            }
            for t in tasks
        ],
    }


def _encode_cursor(request: Request) -> str:
    raw = f"{request.received_at.isoformat()}|{request.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, rid = raw.split("|", 1)
        return datetime.fromisoformat(at), rid
    except (ValueError, UnicodeDecodeError):
        raise LedgerError("bad cursor") from None
