"""Every transaction that changes a request or its tasks locks them in one order: all the request's tasks
(in id order), then the request. One that locked the request first and a task after it deadlocked with one
holding that task and waiting for the request (a completion, which locks every sibling first; reconcile's
sweep): retrying a failed task while a worker completed its sibling was one.

Each test holds a task's row in another connection, as such a transaction does, and runs the operation: it
must wait for that task while the request's row is still free (a probe with NOWAIT gets it at once). Had it
locked the request first, the probe would fail, and a holder that asked for the request would deadlock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select, text

from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger
from orchestrator.ledger.models import Request, Task
from tests.fixtures.lethe import TWO_MEMORY_TARGETS, file_request

pytestmark = pytest.mark.integration

def filed(ledger: Ledger) -> tuple[str, str, str]:
    """(request id, its first task, its second) of a request filed with two independent tasks."""
    datamap = DataMap.parse(TWO_MEMORY_TARGETS)
    request_id = file_request(ledger, datamap, datamap.parse_subject({"user_id": "4711"}))[0]
    with ledger.sessions() as s:
        first, second = s.scalars(select(Task.id).filter_by(request_id=request_id).order_by(Task.position))
    return request_id, first, second


def waits_on_the_task_before_the_request(ledger: Ledger, request_id: str, locked: str,
                                         operation: Callable[[], object]) -> None:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            operation()
        except BaseException as exc:
            failures.append(exc)

    with ledger.engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM tasks WHERE id = :id FOR UPDATE"), {"id": locked})
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 10
        waiting = False
        while worker.is_alive() and not waiting and time.monotonic() < deadline:
            time.sleep(0.02)
            waiting = bool(holder.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": pid}).scalar_one())
        assert waiting, f"it did not wait for the task's lock (failures: {failures})"
        with ledger.engine.connect() as probe:
            got = probe.execute(text("SELECT id FROM requests WHERE id = :id FOR UPDATE NOWAIT"),
                                {"id": request_id}).scalar_one()  # LockNotAvailable if it held the request
            assert got == request_id
            probe.rollback()
        holder.rollback()
    worker.join(20)
    assert not worker.is_alive() and failures == []
    assert ledger.verify() == []


def status_of(ledger: Ledger, request_id: str) -> tuple[str, list[str]]:
    with ledger.sessions() as s:
        request = s.get(Request, request_id)
        assert request is not None
        return request.status, list(s.scalars(select(Task.status).filter_by(request_id=request_id)
                                               .order_by(Task.position)))


def test_failing_a_task_locks_its_sibling_before_the_request(pg_ledger: Ledger) -> None:
    request_id, first, second = filed(pg_ledger)
    assert pg_ledger.claim(first) is not None
    waits_on_the_task_before_the_request(pg_ledger, request_id, second, lambda: pg_ledger.fail(first, "boom"))
    assert status_of(pg_ledger, request_id)[1] == ["failed", "pending"]


def test_a_store_refusing_deletion_locks_the_sibling_before_the_request(pg_ledger: Ledger) -> None:
    request_id, first, second = filed(pg_ledger)
    assert pg_ledger.claim(first) is not None
    waits_on_the_task_before_the_request(pg_ledger, request_id, second,
                                         lambda: pg_ledger.hold_task(first, "object lock"))
    assert status_of(pg_ledger, request_id)[1] == ["held", "pending"]


def test_a_purge_over_its_limit_locks_the_sibling_before_the_request(pg_ledger: Ledger) -> None:
    request_id, first, second = filed(pg_ledger)
    assert pg_ledger.claim(first) is not None
    waits_on_the_task_before_the_request(pg_ledger, request_id, second,
                                         lambda: pg_ledger.await_approval(first, 10, 5))
    assert status_of(pg_ledger, request_id)[1] == ["awaiting_approval", "pending"]


def test_a_retry_locks_the_failed_task_before_the_request(pg_ledger: Ledger) -> None:
    """The deadlock: retry held the request and waited for the failed task, which a completion of its
    sibling held (every sibling locked) while it waited for the request."""
    request_id, first, _ = filed(pg_ledger)
    assert pg_ledger.claim(first) is not None
    pg_ledger.fail(first, "boom")
    waits_on_the_task_before_the_request(pg_ledger, request_id, first, lambda: pg_ledger.retry(request_id))
    assert status_of(pg_ledger, request_id) == ("running", ["pending", "pending"])


def test_an_approval_locks_the_waiting_task_before_the_request(pg_ledger: Ledger) -> None:
    request_id, first, _ = filed(pg_ledger)
    assert pg_ledger.claim(first) is not None
    pg_ledger.await_approval(first, 10, 5)
    waits_on_the_task_before_the_request(pg_ledger, request_id, first, lambda: pg_ledger.approve(request_id))
    assert status_of(pg_ledger, request_id)[1] == ["pending", "pending"]


def test_a_cancel_locks_the_tasks_before_the_request(pg_ledger: Ledger) -> None:
    request_id, first, _ = filed(pg_ledger)
    waits_on_the_task_before_the_request(pg_ledger, request_id, first, lambda: pg_ledger.cancel(request_id))
    assert status_of(pg_ledger, request_id) == ("cancelled", ["skipped", "skipped"])


def test_releasing_a_hold_locks_the_held_tasks_before_the_request(pg_ledger: Ledger) -> None:
    request_id, first, second = filed(pg_ledger)
    with pg_ledger.sessions() as s:
        hashes = list(s.scalars(select(Request.subject_hashes).filter_by(id=request_id)).one().values())
    pg_ledger.add_hold(hashes, "litigation")
    assert pg_ledger.claim_many([first, second]) == []  # both parked by the hold
    assert status_of(pg_ledger, request_id) == ("on_hold", ["held", "held"])
    waits_on_the_task_before_the_request(pg_ledger, request_id, first, lambda: pg_ledger.release_hold(hashes))
    assert status_of(pg_ledger, request_id)[1] == ["pending", "pending"]
