"""A count or verify takes no heartbeat: the worker keeps the task's lease while it runs, so reconcile never
re-sends a live task for a second worker to purge the same listing again. One thread per process renews every
kept call's lease (workers.leases)."""

from __future__ import annotations

import multiprocessing
import time
import warnings
from types import SimpleNamespace

from workers.leases import lease_kept


class RecordingLedger:
    def __init__(self, fail_first: bool = False) -> None:
        self.renewed: list[str] = []
        self.fail_first = fail_first

    def renew_lease(self, task_id: str) -> None:
        if self.fail_first:
            self.fail_first = False
            raise ConnectionError("ledger away")
        self.renewed.append(task_id)


def host(ledger: RecordingLedger, lease: float) -> SimpleNamespace:
    return SimpleNamespace(ledger=ledger, settings=SimpleNamespace(task_lease_seconds=lease))


def test_a_long_call_keeps_its_lease_and_the_keeper_stops_with_it() -> None:
    ledger = RecordingLedger()
    with lease_kept(host(ledger, lease=0.3), "t1"):  # type: ignore[arg-type]
        time.sleep(0.75)  # a count longer than two lease thirds
    renewed = len(ledger.renewed)
    assert renewed >= 2 and set(ledger.renewed) == {"t1"}
    time.sleep(0.3)
    assert len(ledger.renewed) == renewed, "renewals went on after the call ended"


def test_a_failed_renewal_is_tried_again_next_round() -> None:
    ledger = RecordingLedger(fail_first=True)
    with lease_kept(host(ledger, lease=0.3), "t1"):  # type: ignore[arg-type]
        time.sleep(0.75)
    assert ledger.renewed, "one failed renewal stopped the keeper"


def test_an_error_in_the_call_still_stops_its_renewals() -> None:
    ledger = RecordingLedger()
    try:
        with lease_kept(host(ledger, lease=0.3), "t1"):  # type: ignore[arg-type]
            raise ValueError("count failed")
    except ValueError:
        pass
    time.sleep(0.4)
    assert ledger.renewed == []


def test_calls_at_once_are_each_renewed_and_each_stops_with_its_own_end() -> None:
    ledger = RecordingLedger()
    with lease_kept(host(ledger, lease=0.3), "long"):  # type: ignore[arg-type]
        with lease_kept(host(ledger, lease=0.3), "short"):  # type: ignore[arg-type]
            time.sleep(0.35)
        short = ledger.renewed.count("short")
        time.sleep(0.5)
    assert short >= 1 and ledger.renewed.count("short") == short
    assert ledger.renewed.count("long") >= 3


def _renewals_in_a_fork(results: multiprocessing.SimpleQueue) -> None:  # type: ignore[type-arg]
    ledger = RecordingLedger()
    with lease_kept(host(ledger, lease=0.3), "in-child"):  # type: ignore[arg-type]
        time.sleep(0.5)
    results.put(ledger.renewed)


def test_a_forked_pool_process_renews_with_a_thread_of_its_own() -> None:
    """Celery's prefork pool forks after the parent may have kept a lease: the child has no thread then."""
    with lease_kept(host(RecordingLedger(), lease=30), "in-parent"):  # type: ignore[arg-type]
        pass  # the parent's keeper thread is running now
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    child = context.Process(target=_renewals_in_a_fork, args=(results,))
    with warnings.catch_warnings():  # LanceDB, if an earlier test imported it, warns at every fork
        warnings.simplefilter("ignore")
        child.start()
    child.join(10)
    renewed = results.get()
    assert child.exitcode == 0 and len(renewed) >= 2 and set(renewed) == {"in-child"}
