"""Tasks as workers and reconcile see them: claims, leases, slices handed back, completion, failure,
retries, cancelling before a start, and re-dispatch of what was lost."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator.certificates import rfc3339
from orchestrator.identifiers import Subject
from orchestrator.ledger import proof
from orchestrator.ledger.certified_models import MODELS_PREFETCHED, models_acted_on_many
from orchestrator.ledger.common import (
    DONE_TASK,
    NOTHING_MATCHED,
    PARKED_TASK,
    TERMINAL_REQUEST,
    TERMINAL_TASK,
    UNSEALABLE,
    Dispatch,
    LedgerError,
    Outcome,
    TaskRun,
    after_done,
    among,
    hashes_of,
    hold_on,
    now,
    record_detail,
)
from orchestrator.ledger.core import LedgerCore
from orchestrator.ledger.db import WIPED_RAW_VALUES
from orchestrator.ledger.models import (
    CompletionRecord,
    Request,
    Task,
)


class TaskLedger(LedgerCore):
    def claim(self, task_id: str) -> TaskRun | None:
        """Mark a task running and return what it needs, or None when there is nothing to do (finished,
        cancelled, waiting for `after`, or held)."""
        runs = self.claim_many([task_id])
        return runs[0] if runs else None

    def claim_many(self, task_ids: Sequence[str]) -> list[TaskRun]:
        """Mark tasks running and return what each needs, in one transaction; a task with nothing to do
        (finished, cancelled, waiting for `after`, parked, or its subject held) is left out.

        Whether a claim continues a sliced purge (and so skips the count) is read from the task's row, set by
        ``hand_back``: what a broker message claims about itself is never trusted."""
        with self.sessions.begin() as s:
            tasks, requests, siblings = self._lock_tasks(s, task_ids)
            return self._claim(s, task_ids, tasks, requests, siblings)

    def complete_and_claim(self, outcomes: Sequence[Outcome],
                           task_ids: Sequence[str]) -> tuple[list[Dispatch], list[TaskRun]]:
        """``complete_many(outcomes)`` and then ``claim_many(task_ids)`` in one transaction: a worker records
        one chunk of a message and claims the next with one ledger round trip (and one wait for the audit
        chain's lock) instead of two. The same rows are locked, in the same order, as the two would."""
        with self.sessions.begin() as s:
            tasks, requests, siblings = self._lock_tasks(s, [*(o.task_id for o in outcomes), *task_ids])
            done = {o.task_id for o in outcomes}
            finished = [t for t in tasks if t.id in done]
            claimed = [t for t in tasks if t.id not in done]
            dispatches = self._complete(s, outcomes, finished, {t.request_id: requests[t.request_id]
                                                                for t in finished}, siblings)
            return dispatches, self._claim(s, task_ids, claimed, {t.request_id: requests[t.request_id]
                                                                  for t in claimed}, siblings)

    def _claim(self, s: Session, task_ids: Sequence[str], tasks: list[Task], requests: dict[str, Request],
               siblings: dict[str, list[Task]]) -> list[TaskRun]:
        live = [t for t in tasks if t.status not in TERMINAL_TASK]
        if not live:
            return []
        holds = self._active_holds(s, [h for r in requests.values() for h in hashes_of(r)])
        datasets = self._datasets_of(s, [h for r in requests.values() for h in hashes_of(r)])
        order = {task_id: n for n, task_id in enumerate(task_ids)}
        at = now()
        runs = []
        for task in sorted(live, key=lambda t: order[t.id]):
            request = requests[task.request_id]
            family = siblings[request.id]
            if request.status in TERMINAL_REQUEST:
                continue
            if task.status in PARKED_TASK or not after_done(task, family):
                continue
            hold = hold_on(holds, hashes_of(request))
            if hold is not None:  # a hold placed after the request was filed: nothing more is deleted
                self._park(s, request, [task], "held", f"legal hold: {hold.reason}", tasks=family)
                continue
            task.not_dispatched_at = None  # the message arrived
            subject = self._unseal_for_claim(request)
            resolved = self._unseal_derived(request)
            if subject is None or resolved is None:  # nothing can run it: say so on the task, never wait
                task.error = UNSEALABLE
                self._audit(s, "task.unclaimable", request.id, task.id, detail={"target": task.target})
                continue
            continuing = task.continues and task.status == "running"
            task.continues = False
            task.status = "running"
            task.started_at = task.started_at or at
            task.lease_expires_at = at + self.lease
            task.error = None
            if not continuing:
                task.attempts += 1
            self._refresh(s, request, tasks=family)
            hashes = dict(request.subject_hashes)
            every_hash = hashes_of(request)
            # The approved count is the audit chain's, not the row's (a database writer can set the row);
            # the chain is read only for a task whose row says it was approved.
            approved_items = proof.approved_count(s, task) if task.approved_items is not None else None
            runs.append(TaskRun(task.id, request.id, task.target, task.kind, task.attempts, request.dry_run,
                                subject, hashes,
                                request.data_map_digest, approved_items=approved_items,
                                approved=approved_items is not None
                                or (request.dataset is not None and request.approved_at is not None),
                                dataset=request.dataset, continuation=continuing,
                                datasets=sorted({d for h in every_hash for d in datasets.get(h, ())}),
                                derived=resolved))
        return runs

    def _unseal_for_claim(self, request: Request) -> Subject | None:
        """The request's raw identifiers, or None when this host cannot read them (another subject key, or a
        sealed value that was tampered with or is missing)."""
        if request.sealed_subject is None:
            return None
        try:
            return self._unseal(request.id, request.sealed_subject)
        except (InvalidTag, ValueError):
            return None

    def renew_lease(self, task_id: str, done: int | None = None, estimated: int | None = None) -> None:
        """A running task is alive: extend its lease, and record its progress when given."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id)
            if task is not None and task.status == "running":
                task.lease_expires_at = now() + self.lease
                if done is not None:
                    task.progress_done = done
                if estimated is not None:
                    task.progress_estimated = estimated

    def hand_back(self, task_id: str, done: int) -> Dispatch | None:
        """A resumable purge used its time slice: keep what it deleted, renew the lease, send it again."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            if task is None or task.status != "running":
                return None
            task.carried_deleted = (task.carried_deleted or 0) + done
            task.continues = True  # the next claim continues this purge: counted once, at its start
            task.progress_done = task.carried_deleted
            task.lease_expires_at = now() + self.lease
            task.dispatched_at = now()
            self._audit(s, "task.continued", task.request_id, task.id,
                        detail={"target": task.target, "deleted_so_far": task.carried_deleted})
            return Dispatch(task.id, task.kind, continuation=True)

    def complete(self, task_id: str, deleted: int, residue: int, level: str = "bytes_reclaimed",
                 events: Sequence[tuple[str, dict[str, Any]]] = (), note: str | None = None) -> list[Dispatch]:
        """A verified purge (residue 0): write the completion record once and release what waited on it.
        For a dry run, ``deleted`` is what would go and no record is written."""
        if residue:
            raise ValueError("a task with residue cannot complete")
        return self.complete_many([Outcome(task_id, deleted, level, tuple(events), note)])

    def complete_many(self, outcomes: Sequence[Outcome]) -> list[Dispatch]:
        """Record verified purges in one transaction: one completion record each (written once, whatever
        redeliveries do), the audit entries and events, and the release of what waited on them."""
        with self.sessions.begin() as s:
            tasks, requests, siblings = self._lock_tasks(s, [o.task_id for o in outcomes])
            return self._complete(s, outcomes, tasks, requests, siblings)

    def _complete(self, s: Session, outcomes: Sequence[Outcome], tasks: list[Task], requests: dict[str, Request],
                  siblings: dict[str, list[Task]]) -> list[Dispatch]:
        by_task = {o.task_id: o for o in outcomes}
        at = now()
        order = {task_id: n for n, task_id in enumerate(by_task)}
        records: dict[str, dict[str, CompletionRecord]] = {}  # request id -> target -> its record
        totals = {t.id: by_task[t.id].deleted + (t.carried_deleted or 0) for t in tasks}  # earlier slices too
        real = [t for t in tasks if not requests[t.request_id].dry_run]
        if real:
            # Insert-if-absent on (request, target): a redelivered or concurrent run keeps the first.
            dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
            s.execute(dialect.insert(CompletionRecord).on_conflict_do_nothing(), [
                {"request_id": t.request_id, "target": t.target, "task_id": t.id, "deleted": totals[t.id],
                 "residue": 0, "level": by_task[t.id].level, "verified_at": at} for t in real])
            for r in s.scalars(select(CompletionRecord)
                               .where(among(s, CompletionRecord.request_id, {t.request_id for t in real}))):
                records.setdefault(r.request_id, {})[r.target] = r
        for task in sorted(tasks, key=lambda t: order[t.id]):
            if task.status == "completed":  # a redelivered or concurrent run: recorded already
                continue
            request = requests[task.request_id]
            outcome = by_task[task.id]
            record: dict[str, Any] = record_detail(records[task.request_id][task.target]) \
                if not request.dry_run else {
                "target": task.target, "deleted": totals[task.id], "residue": 0, "level": outcome.level,
                "verified_at": rfc3339(at)}
            task.status, task.deleted, task.residue = "completed", record["deleted"], record["residue"]
            task.level, task.error, task.finished_at, task.lease_expires_at = record["level"], None, at, None
            # "erased 0 items" must be visible, not silent: the status, dashboard and certificate say so.
            task.reason = outcome.note or task.reason or (NOTHING_MATCHED if not record["deleted"] else None)
            if task.progress_estimated is not None:
                task.progress_done = record["deleted"]
            # "announced": how many events the target queued (their ids follow from this entry's hash), so a
            # certificate looks up only those (models_acted_on_many).
            entry = self._audit(s, "task.completed", request.id, task.id,
                                detail={**record, "attempt": task.attempts, "dry_run": request.dry_run,
                                        "announced": 0 if request.dry_run else len(outcome.events)})
            if not request.dry_run:
                self._emit(s, "lethe.erasure.task_completed", entry,
                           {"request_id": request.id, "subject_hashes": request.subject_hashes, **record})
                for n, (event_type, data) in enumerate(outcome.events):  # what the target asked to announce
                    self._emit(s, event_type, f"{entry}/{n}", {"request_id": request.id, **data})
        dispatches = []
        # What the requests' certificates read back (the task.completed entries and the events they
        # queued) is flushed now; what _refresh adds (certificates, tombstones, entries, events, signed
        # heads) then goes in one multi-row INSERT per table at commit, not one flush per request.
        s.flush()
        # The models each certificate names, for every request this batch completes, in two queries.
        s.info[MODELS_PREFETCHED] = models_acted_on_many(s, {
            r.id: siblings[r.id] for r in requests.values()
            if not r.dry_run and all(t.status in DONE_TASK for t in siblings[r.id])})
        try:
            with s.no_autoflush:
                for request in requests.values():
                    dispatches += self._release_ready(s, request, siblings[request.id])
                    self._refresh(s, request, tasks=siblings[request.id], records=records.get(request.id))
        finally:
            s.info.pop(MODELS_PREFETCHED)
        return dispatches

    def fail(self, task_id: str, error: str, residue: int | None = None) -> None:
        """A permanent error, or retries exhausted: the task ends failed and keeps the (sanitised) error."""
        with self.sessions.begin() as s:
            (task,), requests, siblings = self._lock_tasks(s, [task_id])
            request = requests[task.request_id]
            if task.status in TERMINAL_TASK:
                return
            task.status, task.error, task.finished_at, task.lease_expires_at = "failed", error, now(), None
            if residue is not None:
                task.residue = residue
            self._audit(s, "task.failed", request.id, task.id, detail={"target": task.target, "error": error})
            self._refresh(s, request, tasks=siblings[request.id])

    def note_retry(self, task_id: str, error: str, countdown: float) -> None:
        """A retryable error: the task stays running; its lease covers the backoff."""
        with self.sessions.begin() as s:
            # Locked before its request's chain is (tasks, then requests, as every transaction locks them).
            task = s.get(Task, task_id, with_for_update=True)
            if task is not None and task.status == "running":
                task.error = error
                task.lease_expires_at = now() + self.lease + timedelta(seconds=countdown)
                self._audit(s, "task.retrying", task.request_id, task.id,
                            detail={"target": task.target, "error": error, "countdown": round(countdown, 1)})

    # -- operators ------------------------------------------------------------------------------------
    def retry(self, request_id: str, actor: str = "cli") -> list[Dispatch]:
        """Failed tasks back to pending; the request runs again."""
        with self.sessions.begin() as s:
            self._request(s, request_id)  # an unknown or malformed id is refused before anything is locked
            requests, siblings = self._lock_family(s, [request_id])
            request, tasks = requests[request_id], siblings[request_id]
            if request.status == "cancelled":
                raise LedgerError("a cancelled request cannot be retried")
            failed = [t for t in tasks if t.status == "failed"
                      or (t.status == "held" and not (t.reason or "").startswith("legal hold"))]
            if not failed:
                raise LedgerError("the request has no failed task to retry")
            for t in failed:
                t.status, t.error, t.finished_at = "pending", None, None
                t.lease_expires_at, t.dispatched_at = None, None
            request.status, request.completed_at = "running", None
            self._audit(s, "request.retried", request_id, actor=actor,
                        detail={"targets": [t.target for t in failed]})
            dispatches = self._release_ready(s, request, tasks)
            self._refresh(s, request, actor=actor, tasks=tasks)
            return dispatches

    def cancel(self, request_id: str, actor: str = "cli") -> None:
        """Only before execution: once any purge started, erasure runs to its end."""
        with self.sessions.begin() as s:
            self._request(s, request_id)  # an unknown or malformed id is refused before anything is locked
            requests, siblings = self._lock_family(s, [request_id])
            request, tasks = requests[request_id], siblings[request_id]
            if request.status in TERMINAL_REQUEST or any(
                t.status not in ("pending", "skipped", "held", "awaiting_approval") or t.attempts for t in tasks
            ):
                raise LedgerError(f"request is {request.status} and has started; only a request that "
                                  "has not started executing can be cancelled")
            request.status, request.completed_at, request.sealed_subject = "cancelled", now(), None
            request.sealed_derived = None
            s.info[WIPED_RAW_VALUES] = True
            for t in tasks:
                if t.status in ("pending", "held", "awaiting_approval"):
                    t.status, t.reason, t.lease_expires_at = "skipped", "cancelled", None
            self._audit(s, "request.cancelled", request_id, actor=actor)

    def mark_not_dispatched(self, task_ids: Sequence[str], error: str) -> None:
        """The broker did not take these tasks: put them on record as not dispatched, with why (shown in
        status), so reconcile sends them on its next pass instead of after the lease."""
        at = now()
        with self.sessions.begin() as s:
            tasks = s.scalars(select(Task).where(among(s, Task.id, set(task_ids)),
                                                 Task.status.in_(("pending", "running")))
                              .order_by(Task.id).with_for_update()).all()
            for task in tasks:
                task.not_dispatched_at, task.error = at, error
            for request_id in sorted({t.request_id for t in tasks}):
                self._audit(s, "tasks.not_dispatched", request_id, actor="dispatch",
                            detail={"targets": sorted(t.target for t in tasks if t.request_id == request_id)})

    def due_for_dispatch(self, limit: int = 1000) -> list[Dispatch]:
        """Non-terminal tasks whose lease ran out, that were never sent, or whose hand-off to the broker
        failed (at once, not after the lease): send them again."""
        at = now()
        with self.sessions.begin() as s:
            rows = s.scalars(
                select(Task)
                .join(Request, Request.id == Task.request_id)
                .where(Task.status.in_(("pending", "running")),
                       Request.status.notin_(TERMINAL_REQUEST),
                       Task.lease_expires_at.is_(None) | (Task.lease_expires_at < at)
                       | Task.not_dispatched_at.is_not(None))
                .order_by(Task.lease_expires_at)
                .limit(limit)
                .with_for_update(of=Task, skip_locked=True)
            ).all()
            # Their requests' chains are locked in id order, as every batch locks them, before any entry.
            self._lock_requests(s, {t.request_id for t in rows})
            dispatches = []
            for task in rows:
                if not self._after_done(s, task):
                    continue
                task.lease_expires_at, task.dispatched_at = at + self.lease, at
                if task.not_dispatched_at is not None:  # sent again: a failed send is marked again by send()
                    task.not_dispatched_at, task.error = None, None
                dispatches.append(Dispatch(task.id, task.kind))
                self._audit(s, "task.redispatched", task.request_id, task.id, actor="reconcile",
                            detail={"target": task.target, "status": task.status})
            return dispatches

