"""The purge task and its base class: claim in the ledger, purge, verify, record once.

Every run ends in one outcome: completed (verified, one completion record), failed (permanent error or
retries exhausted, error kept), or a scheduled retry for an error the target marks retryable.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

import structlog
from celery import Celery, Task
from celery.signals import worker_process_init
from sqlalchemy.exc import DBAPIError

from orchestrator.datamap import DataMap
from orchestrator.identities import subjects_for
from orchestrator.ledger import Dispatch, Outcome, TaskRun
from orchestrator.ledger.snapshots import DEFAULT_MAX_ITEMS
from orchestrator.logs import get_logger, redact_values, scrub
from workers import heap
from workers.host import WorkerHost
from workers.leases import lease_kept
from workers.targets.base import (
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
# A message of many tasks (a bulk erasure) is claimed and recorded in chunks of up to MAX_CHUNK tasks (a
# chunk's record and the next one's claim share a ledger transaction). The first chunk is one task; the
# chunk grows CHUNK_GROWTH-fold while a chunk takes under FAST_CHUNK_SECONDS (fourfold: one request's 4
# tasks take 1 + 3, three transactions, not 1 + 2 + 1). After BATCH_SECONDS the unclaimed rest goes back to
# the queue for whichever worker is free.
MAX_CHUNK = 128
CHUNK_GROWTH = 4
FAST_CHUNK_SECONDS = 0.5
BATCH_SECONDS = 5.0


class LetheTask(Task):
    """Base for lethe's tasks: late acks, ledger access, backoff with jitter."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = None  # lethe counts retries itself against settings.task_max_retries

    @property
    def lethe(self) -> WorkerHost:
        return self.app.lethe

    def retry_later(self, exc: Exception) -> Exception:
        """The ledger is unreachable: this message again after a backoff, up to LETHE_TASK_MAX_RETRIES times
        (reconcile re-sends the tasks if that runs out)."""
        return self.retry(countdown=backoff(self.request.retries + 1), max_retries=self.lethe.settings.task_max_retries,
                          exc=exc)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(celery_id=self.request.id)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            structlog.contextvars.clear_contextvars()


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter after the n-th attempt: 1, 2, 4 … 300 s ceilings."""
    ceiling = min(300.0, 2.0 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def sanitise(exc: BaseException, values: Iterable[str]) -> str:
    """Error text safe to keep: identifiers (``values``, raw) scrubbed, vendor noise truncated."""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PermanentError | RetryableError) else str(exc)
    return scrub(text, values)[:MAX_ERROR_LENGTH]


def purge(self: LetheTask, task_ids: str | list[str], continuation: bool = False, kind: str | None = None) -> str:
    """Run the tasks one message names (one, or up to DISPATCH_BATCH of one kind in a bulk erasure).

    ``continuation`` is accepted and ignored: whether a claim continues a sliced purge is the ledger's
    record (``hand_back``), so a message that claims it cannot skip the blast-radius count.

    They are claimed and recorded in chunks; a chunk grows while purges are quick, and is claimed in the
    transaction that records the one before it. Once the message has run BATCH_SECONDS, the tasks it has not
    claimed go back to the queue, so idle workers share a batch of slow purges. Returns how the tasks ended,
    e.g. "completed=1" or "completed=60 failed=1 noop=3".
    """
    ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
    lethe = self.lethe
    began = time.monotonic()
    ended: Counter[str] = Counter()
    size, position = 1, 0
    announce = False
    claimed: list[TaskRun] | None = None  # the chunk the last record claimed with it, in its transaction
    while position < len(ids):
        if position and kind is not None and time.monotonic() - began > BATCH_SECONDS:
            lethe.send([Dispatch(task_id, kind) for task_id in ids[position:]])
            ended["handed_on"] += len(ids) - position
            break
        chunk_began = time.monotonic()
        chunk = ids[position:position + size]
        position += len(chunk)
        if claimed is None:
            try:
                runs = lethe.ledger.claim_many(chunk)
            except DBAPIError as exc:  # ledger unreachable: try the message again later (finished tasks: no-ops)
                raise self.retry_later(exc) from None
        else:
            runs, claimed = claimed, None
        ended["noop"] += len(chunk) - len(runs)
        verified: list[tuple[TaskRun, Outcome]] = []
        for run in runs:
            structlog.contextvars.bind_contextvars(task_id=run.task_id, request_id=run.request_id,
                                                   target=run.target, kind=run.kind, attempt=run.attempt,
                                                   dry_run=run.dry_run)
            with redact_values(run.raw_values):
                result = _run(self, lethe, run)
            heap.settle("ran", run.kind)  # what the adapter imported on first use
            if isinstance(result, Outcome):
                verified.append((run, result))
            else:
                ended[result] += 1
        structlog.contextvars.unbind_contextvars("task_id", "request_id", "target", "kind", "attempt", "dry_run")
        announce = announce or any(not run.dry_run for run in runs)
        if time.monotonic() - chunk_began < FAST_CHUNK_SECONDS:
            size = min(CHUNK_GROWTH * size, MAX_CHUNK)
        if verified:
            # The next chunk is claimed in the transaction that records this one (one ledger round trip, one
            # wait for the audit chain's lock), unless the message's time is up: then the loop hands it on.
            following = ids[position:position + size] if kind is None or (
                time.monotonic() - began <= BATCH_SECONDS) else []
            outcomes = [outcome for _, outcome in verified]
            try:
                if following:
                    dispatches, claimed = lethe.ledger.complete_and_claim(outcomes, following)
                else:
                    dispatches = lethe.ledger.complete_many(outcomes)
            except DBAPIError as exc:  # the purges are done and idempotent: run them again when it is back
                raise self.retry_later(exc) from None
            for run, outcome in verified:
                log.info("task.completed", task_id=run.task_id, request_id=run.request_id, target=run.target,
                         deleted=outcome.deleted)
            ended["completed"] += len(verified)
            lethe.send(dispatches)
    if announce:  # once per message: the outbox holds every chunk's events until then
        lethe.publish_events()
    return " ".join(f"{k}={n}" for k, n in sorted(ended.items()) if n)


def _run(self: LetheTask, lethe: WorkerHost, run: TaskRun) -> Outcome | str:
    """Count, purge and verify one claimed task. Returns the verified Outcome to record, or how the task
    stopped otherwise ("awaiting_approval", "continued", "held", "retrying", "failed")."""
    ledger = lethe.ledger
    started = time.monotonic()
    residue: int | None = None
    try:
        datamap = stored_map(ledger.map_text(run.data_map_digest), run.data_map_digest)
        config = datamap.target(run.target)
        if run.dataset is not None:  # the dataset's literal selector replaces the subject's template
            config = config.model_copy(update=datamap.datasets[run.dataset][run.target])
        context = TaskContext(run.request_id, run.subject_hashes, run.datasets)
        target = build_target(config, context)
        heap.settle("built", run.kind)  # the client it made (botocore's model) is here for the process's life
        # One subject per resolved value of each derived kind the target needs (SPEC: each is purged).
        subjects = subjects_for(run.subject, run.derived, config.required_identifiers())
        max_items = config.max_items or DEFAULT_MAX_ITEMS
        note = None
        if run.dry_run:
            with lease_kept(lethe, run.task_id):
                deleted = sum(target.count(subject) for subject in subjects)
            if deleted > max_items:
                note = f"would wait for approval: {deleted} items exceed max_items {max_items}"
        else:
            # Count before deleting anything, approved or not: the blast-radius check (an approval covers
            # only the count the admin saw; more than that waits again), and the estimate progress is shown
            # against. A later slice of a sliced purge was counted at its start.
            if not run.continuation:
                with lease_kept(lethe, run.task_id):
                    estimated = sum(target.count(subject) for subject in subjects)
                if estimated > max_items and not run.approval_covers(estimated):
                    log.warning("task.awaiting_approval", items=estimated, max_items=max_items)
                    ledger.await_approval(run.task_id, estimated, max_items)
                    return "awaiting_approval"
                if estimated > PROGRESS_FROM:  # worth showing; a small purge is done before anyone looks
                    ledger.renew_lease(run.task_id, done=0, estimated=estimated)
            slice_ends = (time.monotonic() + lethe.settings.task_slice_seconds
                          if "resumable" in target.capabilities else None)
            deleted, beat = 0, _heartbeat(lethe, run.task_id, slice_ends)
            try:
                for subject in subjects:  # a value already purged in an earlier slice deletes 0 again
                    deleted += target.purge(subject, _offset(beat, deleted))
            except SliceExpired as expired:  # expired.done counts the values purged before too (_offset)
                log.info("task.slice_expired", deleted=expired.done)
                lethe.send([d for d in [ledger.hand_back(run.task_id, expired.done)] if d])
                return "continued"
            with lease_kept(lethe, run.task_id):
                residue = sum(target.verify(subject) for subject in subjects)
            if residue:
                raise RetryableError(f"verify read back {residue} items after the purge")
    except HeldError as exc:
        reason = sanitise(exc, run.raw_values)
        log.warning("task.held", reason=reason)
        ledger.hold_task(run.task_id, reason)
        return "held"
    except Exception as exc:
        retryable = isinstance(exc, (RetryableError, DBAPIError, *_retryable_types(run.kind)))
        error = sanitise(exc, run.raw_values)
        # The ledger counts attempts (a redelivery or reconcile's re-send is one too): attempt n is retry n-1.
        if retryable and run.attempt <= lethe.settings.task_max_retries:
            countdown = backoff(run.attempt)
            log.warning("task.retry", error=error, countdown=round(countdown, 1))
            with suppress(DBAPIError):  # the ledger is down too: the lease still covers the retry
                ledger.note_retry(run.task_id, error, countdown)
            lethe.send([Dispatch(run.task_id, run.kind)], countdown=countdown)
            return "retrying"
        log.error("task.failed", error=error, retryable=retryable)
        ledger.fail(run.task_id, error, residue)
        return "failed"
    log.info("task.verified", deleted=deleted, seconds=round(time.monotonic() - started, 3))
    return Outcome(run.task_id, deleted, target.level, tuple(context.events), note)


@functools.lru_cache(maxsize=32)
def stored_map(text: str, digest: str) -> DataMap:
    """The data map a request was planned from, parsed once per process (a stored map never changes; the
    ledger checked its text against the digest)."""
    return DataMap.parse(text, source=f"data map {digest[:12]}")


def _retryable_types(kind: str) -> tuple[type[BaseException], ...]:
    try:
        return tuple(target_class(kind).retryable_errors)
    except LookupError:
        return ()


def _heartbeat(lethe: WorkerHost, task_id: str, slice_ends: float | None = None) -> Heartbeat:
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


def _offset(beat: Heartbeat, before: int) -> Heartbeat:
    """The heartbeat for one of several resolved values: its progress counts what the values before it
    deleted, so the task's progress (and a slice's hand-back) is the whole task's."""
    def offset(done: int | None = None) -> None:
        beat(None if done is None else before + done)

    return offset


def reconcile(self: LetheTask) -> int:
    return self.lethe.reconcile()


def replay(self: LetheTask, target: str, since: str, actor: str) -> dict[str, Any]:
    return self.lethe.replay(target, since, actor)


def _settle_pool_process(**_: Any) -> None:
    heap.settle("process")


def register(app: Celery) -> None:
    worker_process_init.connect(_settle_pool_process, weak=False)
    app.task(name="lethe.purge", base=LetheTask, bind=True)(purge)
    app.task(name="lethe.reconcile", base=LetheTask, bind=True)(reconcile)
    app.task(name="lethe.replay", base=LetheTask, bind=True)(replay)
