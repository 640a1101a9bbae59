"""Keeping a task's lease while a call that takes no heartbeat runs (a count, a verify).

A count or verify of millions of versions lists for minutes: with the lease run out, reconcile re-sent the
live task and a second worker purged the same listing again (measured: 142k of 300k photos deleted twice
after a worker kill). So every such call is kept: its lease is renewed every third of the lease while it runs.

One thread per process renews every kept call's lease. A thread started and joined per call cost each task
two thread starts and two joins, about 9% of a worker's time on quick purges (make bench, orchestration),
for calls that almost always end long before their first renewal.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.logs import get_logger
from workers.host import WorkerHost

log = get_logger("lethe.worker")


@dataclass
class _Kept:
    lethe: WorkerHost
    task_id: str
    every: float
    due: float


class LeaseKeeper:
    """The process's renewals: calls register while they run; one daemon thread, started at the first call,
    renews what is due. A worker's pool processes are forked, and a fork has no threads: each starts anew."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._tokens = itertools.count()
        self._kept: dict[int, _Kept] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def kept(self, lethe: WorkerHost, task_id: str) -> Iterator[None]:
        """Renew the task's lease while the block runs."""
        every = lethe.settings.task_lease_seconds / 3
        with self._changed:
            token = next(self._tokens)
            self._kept[token] = _Kept(lethe, task_id, every, time.monotonic() + every)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lethe-lease", daemon=True)
                self._thread.start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._kept.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._changed:
                at = time.monotonic()
                due = [(token, kept) for token, kept in self._kept.items() if kept.due <= at]
                if not due:
                    soonest = min((kept.due for kept in self._kept.values()), default=None)
                    self._changed.wait(None if soonest is None else soonest - at)
                    continue
                for _, kept in due:
                    kept.due = at + kept.every
            for token, kept in due:
                if token not in self._kept:  # its call ended meanwhile
                    continue
                try:
                    kept.lethe.ledger.renew_lease(kept.task_id)
                except Exception as exc:  # the ledger is away for a moment: the next round tries again
                    log.warning("task.lease_renewal_failed", task_id=kept.task_id, error=type(exc).__name__)


lease_kept = LeaseKeeper().kept
