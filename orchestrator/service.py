"""One object for every lethe process (CLI, worker, API, intake): settings, the ledger, and sending work.

Every door files requests through it, top-down in one place: request -> plan -> record -> dispatch
(``Lethe.file_many``). Workers reach it only through the narrow ``workers.host.WorkerHost`` interface.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import Settings, get_settings
from orchestrator.datamap import DataMap
from orchestrator.identifiers import Subject
from orchestrator.ledger import TERMINAL_REQUEST, Dispatch, Ledger
from orchestrator.logs import get_logger
from orchestrator.planner import Submission, plan_filings

if TYPE_CHECKING:
    from celery import Celery

log = get_logger("lethe.service")
WAITING_REQUEST = frozenset({"on_hold", "awaiting_approval"})
DISPATCH_BATCH = 256  # task ids per message at most
FILE_BATCH = 500  # requests per ledger transaction in a bulk submission
WAIT_FIRST_POLL, WAIT_GROWTH = 0.005, 1.25  # Lethe.wait: seconds before its first poll, and how the pause grows


class BrokerUnreachable(Exception):
    """The broker of LETHE_BROKER_URL does not answer; the message names what failed, never the URL's secrets."""


class Lethe:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._ledger: Ledger | None = None
        self._ledger_pid = 0
        self._app: Celery | None = None
        self._lock = threading.Lock()
        self._map_cache: tuple[tuple[str, int, int], DataMap] | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger, migrated on first use; recreated in a forked worker child (no shared sockets)."""
        with self._lock:
            if self._ledger is None or self._ledger_pid != os.getpid():
                if self._ledger is not None:
                    self._ledger.engine.dispose(close=False)
                self._ledger = Ledger(self.settings.database_url, self.settings.subject_key_bytes,
                                      self.settings.signing_private_key, self.settings.task_lease_seconds)
                self._ledger_pid = os.getpid()
            return self._ledger

    def migrate(self) -> None:
        """Bring the ledger schema up to date, under a lock (cheap when it is: one SELECT). Call it before
        work starts (a command, a worker's fork, an embedded worker's threads)."""
        from orchestrator.ledger.db import migrate

        migrate(self.ledger.engine)

    @property
    def app(self) -> Celery:
        if self._app is None:
            from workers.app import create_app

            self._app = create_app(self)
        return self._app

    def load_map(self, path: Path | str | None = None) -> DataMap:
        """The data map, parsed again only when the file changed (the intake reads it for every event); refused
        when a target's backups outlive the tombstones (``DataMap.check_retention``)."""
        path = Path(path or self.settings.data_map)
        try:
            stat = path.stat()
            stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            return DataMap.load(path)  # raises a clear DataMapError
        if self._map_cache is None or self._map_cache[0] != stamp:
            self._map_cache = (stamp, DataMap.load(path).check_retention(self.settings.tombstone_days, str(path)))
        return self._map_cache[1]

    # -- requests: request -> plan -> record -> dispatch, for every door (CLI, API, intake) ----------
    def submit(self, subject: Mapping[str, object], *, dry_run: bool = False, regime: str = "gdpr",
               idempotency_key: str | None = None, actor: str = "cli", datamap: DataMap | None = None,
               only_targets: list[str] | None = None, origin: dict[str, Any] | None = None,
               dataset: str | None = None, requested_by: str | None = None) -> tuple[str, bool]:
        """Validate, plan, record and dispatch an erasure request (of a subject, or with ``dataset`` of a
        whole data source declared in the map). Returns (request id, created). ``requested_by``: the API
        token name it is filed under."""
        datamap = datamap or self.load_map()
        parsed = Subject({}) if dataset is not None else datamap.parse_subject(subject)
        (request_id, created), = self.file_many(
            datamap, [Submission(parsed, idempotency_key, origin)], dry_run=dry_run, regime=regime, actor=actor,
            only_targets=only_targets, dataset=dataset, requested_by=requested_by)
        return request_id, created

    def submit_many(self, subjects: Iterable[Mapping[str, object]], *, dry_run: bool = False, regime: str = "gdpr",
                    actor: str = "cli", datamap: DataMap | None = None,
                    on_progress: Callable[[int], None] | None = None) -> list[str]:
        """File one erasure request per subject, FILE_BATCH to a ledger transaction, each batch dispatched
        as soon as it is committed (a bulk erasure of 100k people starts while the rest is filed).
        Every subject is validated before anything is filed: one bad identifier files nothing.
        Returns the request ids in order; ``on_progress(n)`` after each batch."""
        datamap = datamap or self.load_map()
        parsed = [datamap.parse_subject(subject) for subject in subjects]
        # Every identity lookup before the first filing too: a lookup that fails or refuses files nothing.
        submissions = [Submission(subject, resolution=datamap.resolve(subject)) for subject in parsed]
        request_ids: list[str] = []
        for start in range(0, len(submissions), FILE_BATCH):
            filed = self.file_many(datamap, submissions[start:start + FILE_BATCH], dry_run=dry_run,
                                   regime=regime, actor=actor)
            request_ids += [request_id for request_id, _ in filed]
            if on_progress:
                on_progress(len(request_ids))
        log.info("requests.filed", requests=len(request_ids))
        return request_ids

    def file_many(self, datamap: DataMap, submissions: Sequence[Submission], *, dry_run: bool = False,
                  regime: str = "gdpr", actor: str = "cli", only_targets: Collection[str] | None = None,
                  dataset: str | None = None, requested_by: str | None = None) -> list[tuple[str, bool]]:
        """The one filing path: plan each submission, record them in one ledger transaction, dispatch what
        is ready. Returns (request id, created) per submission, in order (see ``Ledger.file_requests``)."""
        filings = plan_filings(datamap, submissions, self.settings.subject_key_bytes, only_targets=only_targets,
                               dataset=dataset)
        filed, dispatches = self.ledger.file_requests(datamap.text, filings, dry_run=dry_run, regime=regime,
                                                      actor=actor, only_targets=only_targets, dataset=dataset,
                                                      requested_by=requested_by)
        not_sent = self.send(dispatches)
        if len(filed) == 1:  # a bulk submission logs once, at its end
            log.info("request.filed", request_id=filed[0][0], created=filed[0][1], tasks=len(dispatches),
                     not_dispatched=not_sent)
        return filed

    def retry(self, request_id: str, actor: str = "cli") -> None:
        self.send(self.ledger.retry(request_id, actor=actor))

    def cancel(self, request_id: str, actor: str = "cli") -> None:
        self.ledger.cancel(request_id, actor=actor)

    def approve(self, request_id: str, actor: str = "cli") -> None:
        self.send(self.ledger.approve(request_id, actor=actor))

    def subject_hashes(self, subject: Mapping[str, object]) -> list[str]:
        """Keyed hashes of a subject's identifiers, validated against the data map."""
        return list(self.load_map().parse_subject(subject).hashes(self.settings.subject_key_bytes).values())

    def add_hold(self, subject: Mapping[str, object], reason: str, until: datetime | None = None,
                 actor: str = "cli") -> int:
        parsed = self.load_map().parse_subject(subject)
        return self.ledger.add_hold(parsed.hashes(self.settings.subject_key_bytes).values(), reason, until,
                                    actor=actor, subject=parsed)

    def release_hold(self, subject: Mapping[str, object], actor: str = "cli") -> None:
        self.send(self.ledger.release_hold(self.subject_hashes(subject), actor=actor))

    def reconcile(self) -> int:
        """Re-send every non-terminal task past its lease or on record as not dispatched, and prune records
        past retention. Returns how many tasks were handed to the broker."""
        dispatches = self.ledger.resume_expired_holds() + self.ledger.due_for_dispatch()
        not_sent = self.send(dispatches)
        if dispatches:
            log.info("reconcile.redispatched", tasks=len(dispatches), not_dispatched=not_sent)
        self.publish_events()
        pruned = self.ledger.prune(self.settings.record_retention_days, self.settings.tombstone_days)
        if pruned:
            log.info("reconcile.pruned", requests=pruned)
        self.ledger.sign_head()  # at most one reconcile period of audit entries is ever unsigned
        return len(dispatches) - not_sent

    def replay(self, target: str, since: str, actor: str) -> dict[str, Any]:
        """The ``lethe.replay`` task: re-erase from one restored target (``orchestrator.replay``)."""
        from orchestrator.replay import replay_task

        return replay_task(self, target, since, actor)

    def send(self, dispatches: list[Dispatch], countdown: float | None = None) -> int:
        """Hand tasks to the broker, after the ledger committed them: one message per kind carries up to
        DISPATCH_BATCH task ids (a bulk erasure releases thousands at once; the worker claims and records
        them in chunks). A failed send is recorded on its tasks (status shows them not dispatched, with
        why) and reconcile sends them again on its next pass. Returns how many tasks were not dispatched."""
        messages: list[tuple[list[str], str]] = []  # (task ids, kind)
        by_kind: dict[str, list[str]] = {}
        for d in dispatches:
            if d.continuation:  # the next slice of one long purge travels alone
                messages.append(([d.task_id], d.kind))
            else:
                by_kind.setdefault(d.kind, []).append(d.task_id)
        for kind, task_ids in by_kind.items():
            messages += [(task_ids[start:start + DISPATCH_BATCH], kind)
                         for start in range(0, len(task_ids), DISPATCH_BATCH)]
        failed: dict[str, list[str]] = {}  # why -> task ids
        for task_ids, kind in messages:
            error = self._send(task_ids, kind, countdown)
            if error:
                failed.setdefault(error, []).extend(task_ids)
        for error, task_ids in failed.items():
            self.ledger.mark_not_dispatched(task_ids, f"not dispatched: {error}; `lethe reconcile` sends it again")
        return sum(map(len, failed.values()))

    def _send(self, task_ids: list[str], kind: str, countdown: float | None) -> str | None:
        """Send one message; returns why the broker did not take it (safe to show), or None."""
        try:
            self.app.send_task("lethe.purge", args=[task_ids], queue=f"purge.{kind}", countdown=countdown,
                               kwargs={"kind": kind})  # whether a slice continues is the ledger's record
        except Exception as exc:
            log.warning("dispatch.failed", tasks=len(task_ids), error=type(exc).__name__)
            return f"the broker could not be reached ({type(exc).__name__})"
        return None

    def check_broker(self, timeout: float = 5.0) -> None:
        """Raise BrokerUnreachable unless the broker of LETHE_BROKER_URL answers (nothing to check in
        embedded mode): commands that dispatch work refuse to start, rather than file work nobody gets."""
        if self.settings.embedded:
            return
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as exc:
            raise BrokerUnreachable(f"the broker ({type(exc).__name__})") from exc

    @property
    def event_key(self) -> bytes | None:
        """LETHE_EVENT_KEY as bytes (its UTF-8 text is the HMAC secret)."""
        return self.settings.event_key.get_secret_value().encode() if self.settings.event_key else None

    def publish_events(self) -> int:
        """Publish the ledger's pending outbound events to lethe.events. A broker outage only delays them:
        they stay in the outbox for the next call (every task end and every reconcile)."""
        from orchestrator.events import publish_outbox

        try:
            # A pooled connection (no connect per call); the batch pipelines the Redis commands.
            with self.app.producer_or_acquire() as producer, producer.batch():
                return publish_outbox(self.ledger, producer)  # Ed25519: never the event key
        except Exception as exc:
            log.warning("events.publish_failed", error=type(exc).__name__)
            return 0

    def wait(self, request_id: str, timeout: float | None = None,
             on_progress: Any = None, interval: float = 0.2) -> dict[str, Any]:
        """Poll the ledger until the request is terminal or waiting; returns the last status object.

        Polls start WAIT_FIRST_POLL apart and grow to ``interval``: a small request is seen done within
        milliseconds of its end, a long one is not polled more often than before. Without ``on_progress`` a
        poll reads the request's status alone, and the whole status object only once it settled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        settled = TERMINAL_REQUEST | WAITING_REQUEST
        pause = min(WAIT_FIRST_POLL, interval)
        while True:
            # The whole status only when it is shown, has settled, or is not known (status() names a bad id).
            counts = None if on_progress else self.ledger.status_counts([request_id])
            if not counts or settled & set(counts) or (deadline is not None and time.monotonic() >= deadline):
                status = self.ledger.status(request_id)
                if on_progress:
                    on_progress(status)
                if status["status"] in settled or (deadline is not None and time.monotonic() >= deadline):
                    return status
            time.sleep(pause)
            pause = min(interval, pause * WAIT_GROWTH)

    def wait_many(self, request_ids: list[str], timeout: float | None = None,
                  on_progress: Callable[[dict[str, int]], None] | None = None,
                  interval: float = 1.0) -> dict[str, int]:
        """Poll the ledger until every request is terminal or waiting; returns how many are in each status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.ledger.status_counts(request_ids)
            if on_progress:
                on_progress(counts)
            settled = sum(n for status, n in counts.items() if status in TERMINAL_REQUEST | WAITING_REQUEST)
            if settled == len(request_ids) or (deadline is not None and time.monotonic() >= deadline):
                return counts
            time.sleep(interval)

    # -- embedded mode ------------------------------------------------------------------------------
    @contextmanager
    def embedded_worker(self, concurrency: int = 2) -> Iterator[None]:
        """An in-process worker on the in-memory broker, for the life of the block (no LETHE_BROKER_URL)."""
        from celery.contrib.testing.worker import start_worker

        self.migrate()  # before the worker threads start
        with start_worker(self.app, pool="threads", concurrency=concurrency, perform_ping_check=False,
                          loglevel="WARNING", shutdown_timeout=30.0):
            yield
