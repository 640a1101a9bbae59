"""No request stuck without a word: a failed hand-off to the broker is on record and re-sent on the next
reconcile pass; a task that cannot run says why. Real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.config import Settings
from orchestrator.service import Lethe
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration

DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every send fails
MAP = """
version: 1
identifiers: {user_id: "[0-9]+"}
targets:
  - {name: sessions, kind: memory, store: sessions, match: {owner: "{user_id}"}}
  - {name: faces, kind: memory, store: faces, match: {owner: "{user_id}"}, after: [sessions]}
"""
USERS = ("12", "123", "7")


@pytest.fixture
def seeded_map(write_map: Callable[[str], Path]) -> Path:
    for store in ("sessions", "faces"):
        MemoryStore.add(store, *({"owner": u, "n": n} for u in USERS for n in range(3)))
    return write_map(MAP)


def owners(store: str) -> dict[str, int]:
    return {u: MemoryStore.count_where(store, {"owner": u}) for u in USERS}


def test_broker_down_at_submit_is_on_record_and_reconcile_sends_it_at_once(
        make_lethe: Callable[..., Lethe], ledger_url: str, redis_broker: str, seeded_map: Path) -> None:
    """Filed while the broker is down: the task is on record as not dispatched (with why) and the request
    says so; once the broker is back, the next reconcile pass sends it (not after the 600 s lease), it runs,
    and only subject 12 is erased."""
    down = make_lethe(database_url=ledger_url, broker_url=DEAD_BROKER, data_map=seeded_map,
                      task_lease_seconds=600)
    request_id, created = down.submit({"user_id": "12"})
    status = down.ledger.status(request_id)
    assert created and status["status"] == "planned" and status["not_dispatched"] == 1, status
    assert down.ledger.not_dispatched_count([request_id]) == 1
    first, second = status["tasks"]
    assert first["not_dispatched_at"] is not None and "not dispatched" in first["error"]
    assert second["not_dispatched_at"] is None and second["error"] is None  # waits for `after`, not sent yet

    assert down.reconcile() == 0  # still down: sent nothing, and still on record as not dispatched
    assert down.ledger.status(request_id)["not_dispatched"] == 1

    up = make_lethe(database_url=ledger_url, broker_url=redis_broker, data_map=seeded_map, task_lease_seconds=600)
    with up.embedded_worker():
        assert up.reconcile() == 1  # the lease has 600 s to go: only the record of the failed send says "now"
        done = up.wait(request_id, timeout=60)
        assert done["status"] == "completed" and done["not_dispatched"] == 0, done
        assert all(t["error"] is None and t["not_dispatched_at"] is None for t in done["tasks"])
        assert up.reconcile() == 0  # sent once: not re-sent on every pass
        assert up.ledger.not_dispatched_count([request_id]) == 0
    for store in ("sessions", "faces"):
        assert owners(store) == {"12": 0, "123": 3, "7": 3}


def test_a_task_that_cannot_be_claimed_says_why(make_lethe: Callable[..., Lethe], ledger_url: str,
                                                redis_broker: str, seeded_map: Path) -> None:
    """The request's sealed identifiers cannot be read (tampered with, or another key): the task does not
    run, deletes nothing, and its status carries the reason instead of waiting `planned` without a word."""
    lethe = make_lethe(database_url=ledger_url, broker_url=redis_broker, data_map=seeded_map)
    request_id, _ = lethe.submit({"user_id": "12"})
    engine = create_engine(Settings(database_url=ledger_url).database_url)
    with engine.begin() as conn:
        sealed = conn.execute(text("SELECT sealed_subject FROM requests WHERE id = :id"), {"id": request_id}).scalar()
        conn.execute(text("UPDATE requests SET sealed_subject = :s WHERE id = :id"),
                     {"s": bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1]), "id": request_id})
    engine.dispose()
    with lethe.embedded_worker():
        status = lethe.wait(request_id, timeout=5)
        assert status["status"] == "planned"
        task = status["tasks"][0]
        deadline_reached = task["error"] is not None
    assert deadline_reached and "cannot unseal" in task["error"] and task["attempts"] == 0, status
    assert "12" not in task["error"]
    for store in ("sessions", "faces"):
        assert owners(store) == {"12": 3, "123": 3, "7": 3}
