"""Safety in the ledger: legal holds, blast-radius approvals and deadline extensions, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger, LedgerError
from orchestrator.ledger.models import Hold, Task
from tests.fixtures.lethe import file_request

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
  - {name: vectors, kind: memory, store: vectors, match: {owner: "{user_id}"}}
"""
DATAMAP = DataMap.parse(MAP)


def hashes(value: str) -> list[str]:
    from tests.fixtures.lethe import SUBJECT_KEY

    return list(DATAMAP.parse_subject({"user_id": value}).hashes(bytes.fromhex(SUBJECT_KEY)).values())


def file(ledger: Ledger, value: str) -> tuple[str, list[str]]:
    request_id, _, dispatches = file_request(ledger, DATAMAP, DATAMAP.parse_subject({"user_id": value}))
    return request_id, [d.task_id for d in dispatches]


def task_ids(ledger: Ledger, request_id: str) -> list[str]:
    with ledger.sessions() as s:
        return list(s.scalars(select(Task.id).where(Task.request_id == request_id).order_by(Task.position)))


def test_held_subject_waits_and_nothing_is_dispatched(ledger: Ledger) -> None:
    """A request for a held subject is on_hold with the reason; release resumes and completes it."""
    ledger.add_hold(hashes("12"), "litigation hold, case 2026-17")
    request_id, sent = file(ledger, "12")
    status = ledger.status(request_id)
    assert sent == [] and status["status"] == "on_hold"
    assert {t["status"] for t in status["tasks"]} == {"held"}
    assert all("case 2026-17" in t["reason"] for t in status["tasks"])
    assert all(ledger.claim(tid) is None for tid in task_ids(ledger, request_id))
    other, other_sent = file(ledger, "123")  # 12's hold never reaches 123
    assert len(other_sent) == 2 and ledger.status(other)["status"] == "planned"

    resumed = ledger.release_hold(hashes("12"))
    assert sorted(d.task_id for d in resumed) == sorted(task_ids(ledger, request_id))
    for tid in task_ids(ledger, request_id):
        assert ledger.claim(tid) is not None
        ledger.complete(tid, 1, 0)
    assert ledger.status(request_id)["status"] == "completed"
    assert [e["action"] for e in ledger.audit_trail(request_id)].count("request.resumed") == 1


def test_hold_placed_after_filing_stops_unstarted_tasks(ledger: Ledger) -> None:
    """A hold added while a request is queued parks its tasks when a worker picks them up."""
    request_id, sent = file(ledger, "77")
    ledger.add_hold(hashes("77"), "regulator inquiry")
    assert ledger.claim(sent[0]) is None
    assert ledger.claim(sent[1]) is None
    assert ledger.status(request_id)["status"] == "on_hold"


def test_expired_hold_releases_its_requests(ledger: Ledger) -> None:
    """A hold whose --until has passed lets its requests go ahead at the next reconcile."""
    ledger.add_hold(hashes("5"), "retention review", until=datetime.now(UTC) + timedelta(days=1))
    request_id, _ = file(ledger, "5")
    assert ledger.resume_expired_holds() == []
    with ledger.sessions.begin() as s:
        s.execute(update(Hold).values(until=datetime.now(UTC) - timedelta(seconds=1)))
    assert len(ledger.resume_expired_holds()) == 2
    assert ledger.status(request_id)["status"] == "planned"


def test_holds_are_keyed_hashes_and_need_a_reason(ledger: Ledger) -> None:
    """Holds store only keyed hashes; a hold without reason or ending in the past is refused."""
    ledger.add_hold(hashes("8675309"), "tax audit")
    with ledger.engine.connect() as conn:
        assert "8675309" not in repr(conn.execute(text("SELECT * FROM holds")).all())
    assert [h["subject_hash"] for h in ledger.list_holds()] == hashes("8675309")
    with pytest.raises(LedgerError, match="reason"):
        ledger.add_hold(hashes("1"), "  ")
    with pytest.raises(LedgerError, match="future"):
        ledger.add_hold(hashes("1"), "x", until=datetime.now(UTC) - timedelta(days=1))
    with pytest.raises(LedgerError, match="no active hold"):
        ledger.release_hold(hashes("1"))


def test_large_purge_waits_for_approval(ledger: Ledger) -> None:
    """A task over max_items waits for approval; approve dispatches it again, approved."""
    request_id, sent = file(ledger, "9")
    run = ledger.claim(sent[0])
    assert run is not None and not run.approved
    ledger.await_approval(sent[0], 250_000, 100_000)
    ledger.claim(sent[1])
    ledger.complete(sent[1], 1, 0)
    status = ledger.status(request_id)
    assert status["status"] == "awaiting_approval"
    assert "250000 items exceed max_items 100000" in status["tasks"][0]["reason"]
    dispatches = ledger.approve(request_id, actor="cli:admin")
    assert [d.task_id for d in dispatches] == [sent[0]]
    run = ledger.claim(sent[0])
    assert run is not None and run.approved
    ledger.complete(sent[0], 250_000, 0)
    assert ledger.status(request_id)["status"] == "completed"
    approved = [e for e in ledger.audit_trail(request_id) if e["action"] == "request.approved"]
    assert approved[0]["actor"] == "cli:admin"
    with pytest.raises(LedgerError, match="nothing waits for approval"):
        ledger.approve(request_id)


def test_deadline_extends_once_per_regime(ledger: Ledger) -> None:
    """GDPR requests gain two months once; a second extension is refused."""
    request_id, _ = file(ledger, "31")
    due = datetime.fromisoformat(ledger.status(request_id)["due_at"])
    extended = datetime.fromisoformat(ledger.extend_deadline(request_id, "complex request"))
    assert (extended - due).days in range(59, 63)
    with pytest.raises(LedgerError, match="already extended"):
        ledger.extend_deadline(request_id, "again")
    assert any(e["action"] == "request.extended" for e in ledger.audit_trail(request_id))


def test_on_hold_request_can_be_cancelled(ledger: Ledger) -> None:
    """A held request has not started, so it may be cancelled."""
    ledger.add_hold(hashes("44"), "hold")
    request_id, _ = file(ledger, "44")
    ledger.cancel(request_id)
    assert ledger.status(request_id)["status"] == "cancelled"
