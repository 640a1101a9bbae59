"""Approval scope through the real worker (Redis broker, PostgreSQL ledger): an approval covers the targets
and counts the admin saw, nothing else; a message cannot talk its way past the count."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select, update

from orchestrator.ledger.models import Task
from orchestrator.service import Lethe
from tests.fixtures.lethe import file_request
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {user_id: "[0-9]+"}
targets:
  - {name: a, kind: memory, store: a, match: {owner: "{user_id}"}, max_items: 10}
  - {name: b, kind: memory, store: b, match: {owner: "{user_id}"}, max_items: 10, after: [a]}
"""


def seed(store: str, owner: str, n: int) -> None:
    MemoryStore.add(store, *({"owner": owner, "n": i} for i in range(n)))


def owned(store: str, owner: str) -> int:
    return sum(1 for r in MemoryStore.records(store) if r["owner"] == owner)


@pytest.fixture
def lethe(pg_database: str, redis_broker: str, write_map: Callable[[str], object],
          make_lethe: Callable[..., Lethe]) -> Lethe:
    seed("a", "12", 20)
    seed("b", "12", 5_000)
    seed("a", "7", 3)
    seed("b", "7", 30)
    return make_lethe(database_url=pg_database, broker_url=redis_broker, data_map=write_map(MAP))


@pytest.fixture
def running(lethe: Lethe) -> Iterator[Lethe]:
    with lethe.embedded_worker():
        yield lethe


def tasks_by_target(status: dict[str, object]) -> dict[str, dict[str, object]]:
    return {t["target"]: t for t in status["tasks"]}  # type: ignore[attr-defined,index]


def test_approving_one_target_does_not_release_an_uncounted_one(running: Lethe) -> None:
    """A waits on 20 items; approving it lets A go, and B (5,000 items, after A) is counted and waits on its
    own approval with nothing deleted; a second approval erases B. Subject 7 keeps everything."""
    request_id, _ = running.submit({"user_id": "12"})
    status = running.wait(request_id, timeout=60)
    assert status["status"] == "awaiting_approval"
    assert [t["status"] for t in status["tasks"]] == ["awaiting_approval", "pending"]

    running.approve(request_id, actor="cli:admin")
    status = running.wait(request_id, timeout=60)
    tasks = tasks_by_target(status)
    assert status["status"] == "awaiting_approval", status
    assert tasks["a"]["status"] == "completed" and tasks["a"]["deleted"] == 20
    assert tasks["b"]["status"] == "awaiting_approval"
    assert "5000 items exceed max_items 10" in str(tasks["b"]["reason"])
    assert owned("a", "12") == 0 and owned("b", "12") == 5_000  # B deleted nothing
    approvals = [e for e in running.ledger.audit_trail(request_id) if e["action"] == "request.approved"]
    assert approvals[0]["detail"]["items"] == {"a": 20}

    running.approve(request_id, actor="cli:admin")
    status = running.wait(request_id, timeout=60)
    assert status["status"] == "completed", status
    assert tasks_by_target(status)["b"]["deleted"] == 5_000
    assert owned("b", "12") == 0
    assert owned("a", "7") == 3 and owned("b", "7") == 30


def test_a_count_grown_beyond_the_approval_waits_again(running: Lethe) -> None:
    """The admin approved 20 items of A; 25 by the time it runs is not what they approved: A waits again."""
    request_id, _ = running.submit({"user_id": "12"})
    assert running.wait(request_id, timeout=60)["status"] == "awaiting_approval"
    seed("a", "12", 5)
    running.approve(request_id, actor="cli:admin")
    time.sleep(0.5)
    status = running.wait(request_id, timeout=60)
    a = tasks_by_target(status)["a"]
    assert a["status"] == "awaiting_approval" and "25 items exceed max_items 10" in str(a["reason"]), status
    assert owned("a", "12") == 25 and owned("b", "12") == 5_000


def test_a_message_claiming_continuation_is_still_counted(lethe: Lethe) -> None:
    """A forged message saying continuation=True for a task whose worker died mid-run (status running, never
    handed back) does not skip the count: the task waits for approval and its 5,000 items stay."""
    datamap = lethe.load_map()
    request_id, _, _ = file_request(lethe.ledger, datamap, datamap.parse_subject({"user_id": "12"}),
                                                 only_targets=["b"])  # filed, never sent: no honest message
    with lethe.ledger.sessions.begin() as s:
        task_id = s.scalars(select(Task.id).where(Task.request_id == request_id)).one()
        s.execute(update(Task).where(Task.id == task_id).values(status="running", attempts=1))
    with lethe.embedded_worker():
        lethe.app.send_task("lethe.purge", args=[[task_id]], queue="purge.memory",
                            kwargs={"kind": "memory", "continuation": True})
        status = lethe.wait(request_id, timeout=60)
        deadline = time.monotonic() + 30
        while status["tasks"][0]["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            status = lethe.ledger.status(request_id)
    task = status["tasks"][0]
    assert task["status"] == "awaiting_approval", status
    assert task["attempts"] == 2  # a new attempt, not a continuation
    assert owned("b", "12") == 5_000 and owned("b", "7") == 30
