"""A count or verify takes no heartbeat: the worker keeps the task's lease while it runs, so reconcile never
re-sends a live task for a second worker to purge the same listing again."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from workers.tasks import _lease_kept


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
    with _lease_kept(host(ledger, lease=0.3), "t1"):  # type: ignore[arg-type]
        time.sleep(0.75)  # a count longer than two lease thirds
    renewed = len(ledger.renewed)
    assert renewed >= 2 and set(ledger.renewed) == {"t1"}
    time.sleep(0.3)
    assert len(ledger.renewed) == renewed, "renewals went on after the call ended"
    assert not [t for t in threading.enumerate() if t.name == "lethe-lease"]


def test_a_failed_renewal_is_tried_again_next_round() -> None:
    ledger = RecordingLedger(fail_first=True)
    with _lease_kept(host(ledger, lease=0.3), "t1"):  # type: ignore[arg-type]
        time.sleep(0.75)
    assert ledger.renewed, "one failed renewal stopped the keeper"


def test_an_error_in_the_call_still_stops_the_keeper() -> None:
    ledger = RecordingLedger()
    try:
        with _lease_kept(host(ledger, lease=30), "t1"):  # type: ignore[arg-type]
            raise ValueError("count failed")
    except ValueError:
        pass
    assert not [t for t in threading.enumerate() if t.name == "lethe-lease"]
