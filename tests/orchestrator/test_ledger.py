"""The ledger on SQLite and PostgreSQL: planning, idempotency, one record per task, status derivation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from orchestrator.datamap import DataMap
from orchestrator.ledger import IdempotencyConflict, Ledger, LedgerError, UnknownRequest, due_date
from orchestrator.ledger.models import AuditEntry, CompletionRecord, Request, Task
from tests.fixtures.lethe import file_request

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: [user_id, email]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
  - {name: mail, kind: memory, store: mail, match: {to: "{email}"}}
  - {name: models, kind: memory, store: models, match: {owner: "{user_id}"}, after: [photos]}
"""
RAW = "user-4711-secret"


@pytest.fixture
def datamap() -> DataMap:
    return DataMap.parse(MAP)


def file(ledger: Ledger, datamap: DataMap, value: str = RAW, **kw):  # type: ignore[no-untyped-def]
    return file_request(ledger, datamap, datamap.parse_subject({"user_id": value}), **kw)


def task_ids(ledger: Ledger, request_id: str) -> dict[str, str]:
    with ledger.sessions() as s:
        return {t.target: t.id for t in s.scalars(select(Task).where(Task.request_id == request_id))}


def test_request_is_planned_with_one_task_per_target(ledger: Ledger, datamap: DataMap) -> None:
    """Filing plans every target; independent ones are dispatched, `after` waits, missing ids skip."""
    request_id, created, dispatches = file(ledger, datamap)
    status = ledger.status(request_id)
    assert created
    assert status["status"] == "planned"
    by_target = {t["target"]: t for t in status["tasks"]}
    assert by_target["photos"]["status"] == "pending"
    assert by_target["models"]["status"] == "pending"
    assert by_target["mail"]["status"] == "skipped"
    assert "email" in by_target["mail"]["reason"]
    assert [d.task_id for d in dispatches] == [task_ids(ledger, request_id)["photos"]]


def test_status_object_has_the_spec_fields(ledger: Ledger, datamap: DataMap) -> None:
    """The status object carries every field of the SPEC, times in RFC 3339 UTC."""
    request_id, _, _ = file(ledger, datamap)
    status = ledger.status(request_id)
    for field in ("id", "scope", "status", "dry_run", "regime", "received_at", "due_at", "completed_at",
                  "tasks"):
        assert field in status
    assert status["scope"] == "subject" and status["regime"] == "gdpr" and status["dry_run"] is False
    assert status["received_at"].endswith("Z")
    for t in status["tasks"]:
        assert {"target", "kind", "status", "deleted", "residue", "attempts", "error"} <= set(t)


def test_ledger_keeps_no_raw_identifier(ledger: Ledger, datamap: DataMap) -> None:
    """Only keyed hashes are stored in the clear; the sealed copy is gone once the request completes."""
    request_id, _, _ = file(ledger, datamap)
    ids = task_ids(ledger, request_id)
    for target in ("photos", "models"):
        ledger.claim(ids[target])
        ledger.complete(ids[target], 1, 0)
    assert ledger.status(request_id)["status"] == "completed"
    with ledger.engine.connect() as conn:
        for table in ("requests", "tasks", "completion_records", "audit_log", "data_maps"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                assert RAW not in repr(tuple(row))
        sealed = conn.execute(text("SELECT sealed_subject FROM requests")).scalar()
    assert sealed is None


def test_idempotency_key_replays_the_same_request(ledger: Ledger, datamap: DataMap) -> None:
    """The same key and body returns the first request; the same key with another body is refused."""
    first, created, _ = file(ledger, datamap, idempotency_key="k-1")
    again, created_again, dispatches = file(ledger, datamap, idempotency_key="k-1")
    assert created and not created_again and first == again and dispatches == []
    with pytest.raises(IdempotencyConflict):
        file(ledger, datamap, value="someone-else", idempotency_key="k-1")
    with ledger.sessions() as s:
        assert len(s.scalars(select(Request)).all()) == 1


def test_redelivered_completion_writes_one_record(ledger: Ledger, datamap: DataMap) -> None:
    """Completing a task twice keeps the first record and counts; claiming it again does nothing."""
    request_id, _, _ = file(ledger, datamap)
    photos = task_ids(ledger, request_id)["photos"]
    assert ledger.claim(photos) is not None
    ledger.complete(photos, 7, 0)
    ledger.complete(photos, 0, 0)
    assert ledger.claim(photos) is None
    assert ledger.completion_record_count(request_id) == 1
    assert next(t for t in ledger.status(request_id)["tasks"] if t["target"] == "photos")["deleted"] == 7


def test_after_releases_dependents_when_the_dependency_completes(ledger: Ledger, datamap: DataMap) -> None:
    """A task waiting on `after` is not claimable until its dependency completes, then it is dispatched."""
    request_id, _, _ = file(ledger, datamap)
    ids = task_ids(ledger, request_id)
    assert ledger.claim(ids["models"]) is None
    ledger.claim(ids["photos"])
    dispatches = ledger.complete(ids["photos"], 1, 0)
    assert [d.task_id for d in dispatches] == [ids["models"]]
    run = ledger.claim(ids["models"])
    assert run is not None and run.subject["user_id"] == RAW and run.attempt == 1


def test_failure_blocks_dependents_and_fails_the_request(ledger: Ledger, datamap: DataMap) -> None:
    """A failed task with nothing left to run fails the request; retry puts it back to pending."""
    request_id, _, _ = file(ledger, datamap)
    ids = task_ids(ledger, request_id)
    ledger.claim(ids["photos"])
    ledger.fail(ids["photos"], "S3 DeleteObjects on bucket b: AccessDenied")
    status = ledger.status(request_id)
    assert status["status"] == "failed"
    assert status["completed_at"] is not None
    assert next(t for t in status["tasks"] if t["target"] == "photos")["error"].endswith("AccessDenied")
    dispatches = ledger.retry(request_id)
    assert [d.task_id for d in dispatches] == [ids["photos"]]
    assert ledger.status(request_id)["status"] == "running"
    run = ledger.claim(ids["photos"])
    assert run is not None and run.attempt == 2


def test_retry_without_failed_tasks_is_refused(ledger: Ledger, datamap: DataMap) -> None:
    """Retrying a request with no failed task is a clear error."""
    request_id, _, _ = file(ledger, datamap)
    with pytest.raises(LedgerError, match="no failed task"):
        ledger.retry(request_id)


def test_cancel_only_before_execution(ledger: Ledger, datamap: DataMap) -> None:
    """Cancel works before any task started, is refused after, and a cancelled task is never claimed."""
    request_id, _, _ = file(ledger, datamap)
    ledger.cancel(request_id)
    assert ledger.status(request_id)["status"] == "cancelled"
    assert ledger.claim(task_ids(ledger, request_id)["photos"]) is None

    started, _, _ = file(ledger, datamap, value="other")
    ledger.claim(task_ids(ledger, started)["photos"])
    with pytest.raises(LedgerError, match="has started"):
        ledger.cancel(started)


def test_reconcile_finds_tasks_past_their_lease(ledger: Ledger, datamap: DataMap) -> None:
    """A dispatched task whose lease ran out is due again; a fresh lease or a finished task is not."""
    request_id, _, _ = file(ledger, datamap)
    photos = task_ids(ledger, request_id)["photos"]
    assert ledger.due_for_dispatch() == []
    with ledger.sessions.begin() as s:
        s.execute(update(Task).where(Task.id == photos)
                  .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert [d.task_id for d in ledger.due_for_dispatch()] == [photos]
    assert ledger.due_for_dispatch() == []  # re-leased
    ledger.claim(photos)
    ledger.complete(photos, 0, 0)
    with ledger.sessions.begin() as s:
        s.execute(update(Task).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert [d.task_id for d in ledger.due_for_dispatch()] == [task_ids(ledger, request_id)["models"]]


def test_dry_run_writes_no_completion_record(ledger: Ledger, datamap: DataMap) -> None:
    """A dry run completes with counts but no completion record."""
    request_id, _, _ = file(ledger, datamap, dry_run=True)
    ids = task_ids(ledger, request_id)
    for target in ("photos", "models"):
        ledger.claim(ids[target])
        ledger.complete(ids[target], 3, 0)
    status = ledger.status(request_id)
    assert status["status"] == "completed" and status["dry_run"] is True
    assert ledger.completion_record_count(request_id) == 0


def test_unknown_request_is_a_clear_error(ledger: Ledger) -> None:
    """Unknown or malformed ids raise UnknownRequest, not a database error."""
    with pytest.raises(UnknownRequest):
        ledger.status("00000000-0000-0000-0000-000000000000")
    with pytest.raises(UnknownRequest):
        ledger.status("'; DROP TABLE requests; --")


def test_list_pages_newest_first(ledger: Ledger, datamap: DataMap) -> None:
    """Listing is newest first and the cursor walks every request exactly once."""
    ids = [file(ledger, datamap, value=f"u{i}")[0] for i in range(5)]
    seen, cursor = [], None
    while True:
        page = ledger.list_requests(limit=2, cursor=cursor)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert [i["id"] for i in ledger.list_requests(status="planned")["items"]] == list(reversed(ids))
    assert ledger.list_requests(status="completed")["items"] == []


def test_due_dates_follow_the_regime() -> None:
    """GDPR: one calendar month (clamped to month end); CCPA: 45 days."""
    jan31 = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert due_date(jan31, "gdpr") == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert due_date(datetime(2026, 12, 15, tzinfo=UTC), "gdpr") == datetime(2027, 1, 15, tzinfo=UTC)
    assert due_date(jan31, "ccpa") == jan31 + timedelta(days=45)


def test_concurrent_completions_complete_the_request_once(ledger: Ledger) -> None:
    """Tasks of one request finishing at the same time in many threads complete it exactly once."""
    targets = "\n".join(
        f'  - {{name: t{i}, kind: memory, store: s{i}, match: {{owner: "{{user_id}}"}}}}' for i in range(8))
    datamap = DataMap.parse(f"version: 1\nidentifiers: [user_id]\ntargets:\n{targets}\n")
    request_id, _, _ = file(ledger, datamap)
    ids = list(task_ids(ledger, request_id).values())
    for tid in ids:
        ledger.claim(tid)
    barrier = threading.Barrier(len(ids))

    def finish(tid: str) -> None:
        barrier.wait()
        ledger.complete(tid, 1, 0)

    threads = [threading.Thread(target=finish, args=(tid,)) for tid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.status(request_id)["status"] == "completed"
    with ledger.sessions() as s:
        assert len(s.scalars(select(CompletionRecord)).all()) == len(ids)
        completed = s.scalars(select(AuditEntry).where(AuditEntry.action == "request.completed")).all()
        assert len(completed) == 1


def test_lineage_records_members_as_hashes_and_finds_datasets(ledger: Ledger, subject_key: bytes) -> None:
    """Recorded datasets are found by subject hash; re-recording replaces members; no raw value is kept."""
    from orchestrator.identifiers import keyed_hash

    def h(value: str) -> str:
        return keyed_hash(subject_key, "user_id", value)

    assert ledger.record_lineage("faces", "d1", (h(str(i)) for i in range(25_000))) == 25_000
    ledger.record_lineage("faces", "d2", [h("12"), h("999999")])
    ledger.record_lineage("voices", "v1", [h("123")])
    assert ledger.datasets_for([h("12")]) == [("faces", "d1"), ("faces", "d2")]
    assert ledger.datasets_for([h("123")]) == [("faces", "d1"), ("voices", "v1")]
    assert ledger.datasets_for([h("nobody")]) == []
    ledger.record_lineage("faces", "d2", [h("999999")])
    assert ledger.datasets_for([h("12")]) == [("faces", "d1")]
    with ledger.engine.connect() as conn:
        stored = conn.execute(text("SELECT subject_hash FROM dataset_members WHERE dataset_name = 'voices'")).all()
    assert [row[0] for row in stored] == [h("123")]
    assert ledger.verify() == []


def test_forged_cursors_are_a_clear_error(ledger: Ledger) -> None:
    """A cursor that lethe did not hand out (naive time, NUL in the id, garbage) is refused, not a 500."""
    import base64

    for raw in (b"2026-01-01T00:00:00|00000000-0000-0000-0000-000000000000", b"2026-01-01T00:00:00+00:00|\x00",
                b"not a cursor"):
        with pytest.raises(LedgerError, match="bad cursor"):
            ledger.list_requests(cursor=base64.urlsafe_b64encode(raw).decode())


def test_log_scrubbing_spares_ids_that_contain_the_value() -> None:
    """Scrubbing removes a subject value standing alone but not digits inside a UUID or a longer number."""
    from orchestrator.logs import REDACTED, scrub

    assert scrub("key users/12/a.jpg", ["12"]) == f"key users/{REDACTED}/a.jpg"
    assert scrub("task 3ef3e4912b-77 and 123", ["12"]) == "task 3ef3e4912b-77 and 123"
    assert scrub("email a.b@example.org!", ["a.b@example.org"]) == f"email {REDACTED}!"
