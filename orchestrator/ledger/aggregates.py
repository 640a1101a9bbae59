"""Aggregate reads for /metrics and the dashboard: counts by status and kind, throughput per hour, where an
unfinished request stands. They never write; workers are other processes, so everything is computed from
the ledger when it is asked for."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from orchestrator.ledger.common import FINISHED, RESURRECTION_ACTOR, now
from orchestrator.ledger.models import AuditEntry, CompletionRecord, Request, Task
from orchestrator.ledger.outbox import OutboxLedger

DUE_SOON = timedelta(days=3)
ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")


@dataclass
class Snapshot:
    """Everything /metrics exposes, read in one session."""

    requests_by_status: dict[str, int] = field(default_factory=dict)
    tasks_by_kind_status: dict[tuple[str, str], int] = field(default_factory=dict)
    erased_by_target: dict[str, int] = field(default_factory=dict)
    oldest_open_age: float = 0.0
    overdue: int = 0
    due_soon: int = 0
    retries_by_kind: dict[str, int] = field(default_factory=dict)
    operator_retries: int = 0
    durations_by_kind: dict[str, list[float]] = field(default_factory=dict)
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    not_dispatched: int = 0  # tasks the broker refused, waiting for reconcile's next pass
    resurrections_by_target: dict[str, int] = field(default_factory=dict)  # the watch's follow-ups


@dataclass
class Overview:
    hours: list[datetime]
    received_per_hour: list[int]
    completed_per_hour: list[int]
    erased_per_hour: list[int]
    failed_now_by_target: dict[str, int]
    failures_by_target: dict[str, int]  # task.failed entries still in the audit trail
    counts: dict[str, int]


@dataclass(frozen=True)
class Waiting:
    """Where an unfinished request stands: when anything last happened to it, and when reconcile re-sends
    its tasks if nothing does (the earliest lease of a task a worker should be running)."""

    last_progress: datetime
    next_resend: datetime | None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class AggregateLedger(OutboxLedger):
    def metrics_snapshot(self) -> Snapshot:
        """Everything /metrics exposes, read in one session."""
        at = now()
        snap = Snapshot()
        open_ = Request.status.notin_(FINISHED)
        with self.sessions() as s:
            for status, n in s.execute(select(Request.status, func.count()).group_by(Request.status)):
                snap.requests_by_status[status] = n
            for kind, status, n in s.execute(select(Task.kind, Task.status, func.count())
                                             .group_by(Task.kind, Task.status)):
                snap.tasks_by_kind_status[(kind, status)] = n
            for target, total in s.execute(select(CompletionRecord.target, func.sum(CompletionRecord.deleted))
                                           .group_by(CompletionRecord.target)):
                snap.erased_by_target[target] = int(total or 0)
            oldest = s.scalar(select(func.min(Request.received_at)).where(open_))
            if oldest is not None:
                snap.oldest_open_age = max(0.0, (at - _aware(oldest)).total_seconds())
            snap.overdue = s.scalar(select(func.count()).select_from(Request).where(open_, Request.due_at < at)) or 0
            snap.due_soon = s.scalar(select(func.count()).select_from(Request).where(
                open_, Request.due_at >= at, Request.due_at < at + DUE_SOON)) or 0
            for kind, n in s.execute(select(Task.kind, func.count()).select_from(AuditEntry)
                                     .join(Task, Task.id == AuditEntry.task_id)
                                     .where(AuditEntry.action == "task.retrying").group_by(Task.kind)):
                snap.retries_by_kind[kind] = n
            snap.not_dispatched = s.scalar(select(func.count()).select_from(Task).where(
                Task.not_dispatched_at.is_not(None), Task.status.in_(("pending", "running")))) or 0
            snap.operator_retries = s.scalar(select(func.count()).select_from(AuditEntry)
                                             .where(AuditEntry.action == "request.retried")) or 0
            for kind, started, finished in s.execute(
                    select(Task.kind, Task.started_at, Task.finished_at)
                    .where(Task.status.in_(("completed", "failed")), Task.started_at.is_not(None),
                           Task.finished_at.is_not(None))):
                if started is not None and finished is not None:
                    snap.durations_by_kind.setdefault(kind, []).append(
                        max(0.0, (_aware(finished) - _aware(started)).total_seconds()))
            watch = RESURRECTION_ACTOR + ":"
            for actor, n in s.execute(select(Request.actor, func.count()).where(Request.actor.startswith(watch))
                                      .group_by(Request.actor)):
                snap.resurrections_by_target[actor.removeprefix(watch)] = n
        snap.dead_letters_by_reason = self.dead_letter_counts()
        return snap

    def overview(self, snap: Snapshot, hours: int = 24) -> Overview:
        """Throughput per hour over the last ``hours`` hours, and failures by target (``snap``: the counts)."""
        at = now()
        end = at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(hours=hours)
        slots = [start + timedelta(hours=i) for i in range(hours)]

        def slot(t: datetime) -> int:
            """The hour's index; a time from another host's skewed clock lands in the nearest hour shown."""
            return min(hours - 1, max(0, int((_aware(t) - start).total_seconds() // 3600)))

        received, completed, erased = [0] * hours, [0] * hours, [0] * hours
        with self.sessions() as s:
            for (t,) in s.execute(select(Request.received_at).where(Request.received_at >= start)):
                received[slot(t)] += 1
            for (done,) in s.execute(select(Request.completed_at).where(Request.status == "completed",
                                                                          Request.completed_at >= start)):
                if done is not None:
                    completed[slot(done)] += 1
            for t, n in s.execute(select(CompletionRecord.verified_at, CompletionRecord.deleted)
                                  .where(CompletionRecord.verified_at >= start)):
                erased[slot(t)] += n
            failed_now = dict(s.execute(select(Task.target, func.count()).where(Task.status == "failed")
                                        .group_by(Task.target)).all())
            failures = dict(s.execute(select(Task.target, func.count()).select_from(AuditEntry)
                                      .join(Task, Task.id == AuditEntry.task_id)
                                      .where(AuditEntry.action == "task.failed").group_by(Task.target)).all())
        counts: Counter[str] = Counter(snap.requests_by_status)
        counts_out = {
            "open": sum(n for st, n in counts.items() if st not in FINISHED),
            "overdue": snap.overdue,
            "due_soon": snap.due_soon,
            "failed": counts.get("failed", 0),
            "completed": counts.get("completed", 0),
        }
        return Overview(slots, received, completed, [max(0, n) for n in erased], failed_now, failures, counts_out)

    def ids_with_prefix(self, prefix: str, status: str | None = None, limit: int = 50,
                        requested_by: str | None = None) -> list[str]:
        """Request ids starting with ``prefix`` (lowercase hex and dashes only), newest first; ``requested_by``:
        only those filed under that token name."""
        prefix = prefix.strip().lower()
        if not ID_PREFIX.fullmatch(prefix):
            return []
        with self.sessions() as s:
            query = select(Request.id).where(Request.id.startswith(prefix, autoescape=True))
            if requested_by is not None:
                query = query.where(Request.requested_by == requested_by)
            if status:
                query = query.where(Request.status == status)
            return list(s.scalars(query.order_by(Request.received_at.desc(), Request.id.desc()).limit(limit)))

    def waiting(self, ids: list[str]) -> dict[str, Waiting]:
        """``Waiting`` of each of these requests that is not finished. Progress is the latest audit entry of the
        request or heartbeat of its running tasks (a heartbeat renews the lease: it was ``lease`` before its end)."""
        if not ids:
            return {}
        latest: dict[str, datetime] = {}
        resend: dict[str, datetime] = {}
        with self.sessions() as s:
            for rid, received in s.execute(select(Request.id, Request.received_at)
                                           .where(Request.id.in_(ids), Request.status.notin_(FINISHED))):
                latest[rid] = _aware(received)
            if not latest:
                return {}
            for entry_request, entry_at in s.execute(
                    select(AuditEntry.request_id, func.max(AuditEntry.at))
                    .where(AuditEntry.request_id.in_(latest)).group_by(AuditEntry.request_id)):
                if entry_request is not None and entry_at is not None:
                    latest[entry_request] = max(latest[entry_request], _aware(entry_at))
            for task_request, status, lease in s.execute(
                    select(Task.request_id, Task.status, Task.lease_expires_at)
                    .where(Task.request_id.in_(latest), Task.status.in_(("pending", "running")),
                           Task.lease_expires_at.is_not(None))):
                if lease is None:
                    continue
                lease = _aware(lease)
                resend[task_request] = min(resend.get(task_request, lease), lease)
                if status == "running":
                    latest[task_request] = max(latest[task_request], lease - self.lease)
        at = now()  # a retry's countdown puts its lease further out: progress is never in the future
        return {rid: Waiting(min(last, at), resend.get(rid)) for rid, last in latest.items()}
