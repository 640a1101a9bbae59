"""The purge task and its base class: claim in the ledger, purge, verify, record once.

Every run ends in one outcome: completed (verified, one completion record), failed (permanent error or
retries exhausted, error kept), or a scheduled retry for an error the target marks retryable.
"""

from __future__ import annotations

import random
import time
from contextlib import suppress
from typing import Any

import structlog
from celery import Celery, Task
from sqlalchemy.exc import DBAPIError

from orchestrator.identifiers import Subject
from orchestrator.logs import get_logger, redact_values, scrub
from orchestrator.service import Lethe
from workers.targets.base import (
    DEFAULT_MAX_ITEMS,
    Heartbeat,
    HeldError,
    PermanentError,
    RetryableError,
    SliceExpired,
    TaskContext,
    build_target,
    target_class,
)

log = get_logger("lethe.worker")
MAX_ERROR_LENGTH = 500
PROGRESS_FROM = 1_000  # items: a purge this large records its progress (one ledger write more per task)


class LetheTask(Task):
    """Base for lethe's tasks: late acks, ledger access, backoff with jitter."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = None  # lethe counts retries itself against settings.task_max_retries

    @property
    def lethe(self) -> Lethe:
        return self.app.lethe

    def backoff(self) -> float:
        """Exponential backoff with full jitter: 1, 2, 4 … 300 s ceilings."""
        ceiling = min(300.0, 2.0 ** self.request.retries)
        return random.uniform(ceiling / 2, ceiling)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(celery_id=self.request.id)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            structlog.contextvars.clear_contextvars()


def sanitise(exc: BaseException, subject: Subject) -> str:
    """Error text safe to keep: identifiers scrubbed, vendor noise truncated."""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PermanentError | RetryableError) else str(exc)
    return scrub(text, subject.values())[:MAX_ERROR_LENGTH]


def purge(self: LetheTask, task_id: str, continuation: bool = False) -> str:
    lethe = self.lethe
    structlog.contextvars.bind_contextvars(task_id=task_id)
    try:
        run = lethe.ledger.claim(task_id, continuation=continuation)
    except DBAPIError as exc:  # ledger unreachable: try again later; reconcile covers us if this runs out
        raise self.retry(countdown=self.backoff(), max_retries=lethe.settings.task_max_retries,
                         exc=exc) from None
    if run is None:
        log.info("task.skip", reason="nothing to do (finished, cancelled, or waiting)")
        return "noop"
    structlog.contextvars.bind_contextvars(request_id=run.request_id, target=run.target, kind=run.kind,
                                           attempt=run.attempt, dry_run=run.dry_run)
    with redact_values(run.subject.values()):
        return _run(self, lethe, run)


def _run(self: LetheTask, lethe: Lethe, run: Any) -> str:
    ledger = lethe.ledger
    started = time.monotonic()
    residue: int | None = None
    try:
        datamap = ledger.data_map(run.data_map_digest)
        config = datamap.target(run.target)
        if run.dataset is not None:  # the dataset's literal selector replaces the subject's template
            config = config.model_copy(update=datamap.datasets[run.dataset][run.target])
        context = TaskContext(run.request_id, run.subject_hashes, ledger.datasets_for(run.subject_hashes.values()))
        target = build_target(config, context)
        max_items = config.max_items or DEFAULT_MAX_ITEMS
        note = None
        if run.dry_run:
            deleted = target.count(run.subject)
            if deleted > max_items:
                note = f"would wait for approval: {deleted} items exceed max_items {max_items}"
        else:
            # Count before deleting anything: the blast-radius check, and the estimate progress is shown
            # against (a dataset purge is approved but long, so it is counted too).
            if not run.continuation and (not run.approved or run.dataset is not None):
                estimated = target.count(run.subject)
                if not run.approved and estimated > max_items:
                    log.warning("task.awaiting_approval", items=estimated, max_items=max_items)
                    ledger.await_approval(run.task_id, estimated, max_items)
                    return "awaiting_approval"
                if estimated > PROGRESS_FROM:  # worth showing; a small purge is done before anyone looks
                    ledger.renew_lease(run.task_id, done=0, estimated=estimated)
            slice_ends = (time.monotonic() + lethe.settings.task_slice_seconds
                          if "resumable" in target.capabilities else None)
            try:
                deleted = target.purge(run.subject, _heartbeat(lethe, run.task_id, slice_ends))
            except SliceExpired as expired:
                log.info("task.slice_expired", deleted=expired.done)
                lethe.send([d for d in [ledger.hand_back(run.task_id, expired.done)] if d])
                return "continued"
            residue = target.verify(run.subject)
            if residue:
                raise RetryableError(f"verify read back {residue} items after the purge")
        dispatches = ledger.complete(run.task_id, deleted, 0, level=target.level, events=context.events,
                                     note=note)
    except HeldError as exc:
        reason = sanitise(exc, run.subject)
        log.warning("task.held", reason=reason)
        ledger.hold_task(run.task_id, reason)
        return "held"
    except Exception as exc:
        retryable = isinstance(exc, (RetryableError, DBAPIError, *_retryable_types(run.kind)))
        error = sanitise(exc, run.subject)
        if retryable and self.request.retries < lethe.settings.task_max_retries:
            countdown = self.backoff()
            log.warning("task.retry", error=error, countdown=round(countdown, 1))
            with suppress(DBAPIError):  # the ledger is down too: the lease still covers the retry
                ledger.note_retry(run.task_id, error, countdown)
            raise self.retry(countdown=countdown, max_retries=None) from None
        log.error("task.failed", error=error, retryable=retryable)
        ledger.fail(run.task_id, error, residue)
        lethe.publish_events()
        return "failed"
    log.info("task.completed", deleted=deleted, seconds=round(time.monotonic() - started, 3))
    lethe.send(dispatches)
    if not run.dry_run:
        lethe.publish_events()
    return "completed"


def _retryable_types(kind: str) -> tuple[type[BaseException], ...]:
    try:
        return tuple(target_class(kind).retryable_errors)
    except LookupError:
        return ()


def _heartbeat(lethe: Lethe, task_id: str, slice_ends: float | None = None) -> Heartbeat:
    """Renew the task's lease (and record progress) at most every 2 s, however often the target calls;
    the lease needs far less, progress reads better live. For a resumable target, end the slice once its
    time is up (between two pages, where the target calls)."""
    every = min(2.0, lethe.settings.task_lease_seconds / 10)
    last = time.monotonic()

    def beat(done: int | None = None) -> None:
        nonlocal last
        # A slice ends only after it made progress: handing back a slice that removed nothing would loop.
        if slice_ends is not None and done and time.monotonic() >= slice_ends:
            raise SliceExpired(done)
        if time.monotonic() - last >= every:
            lethe.ledger.renew_lease(task_id, done=done)
            last = time.monotonic()

    return beat


def reconcile(self: LetheTask) -> int:
    return self.lethe.reconcile()


def register(app: Celery) -> None:
    app.task(name="lethe.purge", base=LetheTask, bind=True)(purge)
    app.task(name="lethe.reconcile", base=LetheTask, bind=True)(reconcile)
