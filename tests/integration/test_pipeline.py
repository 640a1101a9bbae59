"""End to end: requests through a real Celery worker on Redis, the ledger on PostgreSQL, S3 over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from orchestrator.ledger.models import Task
from orchestrator.service import Lethe
from orchestrator.testing import put_objects, version_keys, versions_per_owner
from tests.fixtures.lethe import file_request
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - name: profile-photos
    kind: s3
    endpoint_url: {endpoint}
    bucket: {bucket}
    prefix: "users/{{user_id}}/"
  - name: sessions
    kind: memory
    store: sessions
    match: {{owner: "{{user_id}}"}}
    after: [profile-photos]
    fail_times: {fail_times}
"""
USERS = ["12", "123", "1234", "7"]


def seed(endpoint: str, bucket: str) -> None:
    put_objects(endpoint, bucket, [f"users/{u}/p{i}.jpg" for u in USERS for i in range(3)], versions=2)
    put_objects(endpoint, bucket, [f"users/{u}/gone.jpg" for u in USERS], delete_marker=True)
    MemoryStore.add("sessions", *({"owner": u, "n": n} for u in USERS for n in range(2)))


@pytest.fixture
def pipeline(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str,
             write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe]) -> Callable[..., Lethe]:
    """A Lethe on Redis + PostgreSQL over a seeded bucket; call it with map options."""
    seed(s3_endpoint, bucket)

    def build(fail_times: int = 0, bucket_name: str = bucket) -> Lethe:
        path = write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket_name, fail_times=fail_times))
        return make_lethe(database_url=pg_database, broker_url=redis_broker, data_map=path)

    return build


@pytest.fixture
def running(pipeline: Callable[..., Lethe]) -> Iterator[Callable[..., Lethe]]:
    """Like pipeline, with an in-process Celery worker (threads) consuming from Redis."""
    started: list[object] = []

    def build(**kw: object) -> Lethe:
        lethe = pipeline(**kw)
        ctx = lethe.embedded_worker(concurrency=2)
        ctx.__enter__()
        started.append(ctx)
        return lethe

    yield build
    for ctx in started:
        ctx.__exit__(None, None, None)  # type: ignore[attr-defined]


def test_erasure_removes_every_version_and_nothing_of_others(running, s3_endpoint: str, bucket: str) -> None:
    """Subject 12 loses every version and delete marker; 123, 1234 and 7 keep everything."""
    lethe = running()
    before = versions_per_owner(s3_endpoint, bucket)
    request_id, created = lethe.submit({"user_id": "12"})
    status = lethe.wait(request_id, timeout=60)
    assert created and status["status"] == "completed", status
    after = versions_per_owner(s3_endpoint, bucket)
    assert after["12"] == 0
    assert {u: after[u] for u in USERS if u != "12"} == {u: before[u] for u in USERS if u != "12"}
    photos = next(t for t in status["tasks"] if t["target"] == "profile-photos")
    assert photos["deleted"] == before["12"] == 3 * 2 + 2  # 3 objects x 2 versions + 1 version + 1 marker
    assert photos["residue"] == 0 and photos["attempts"] == 1
    assert photos["progress"] is None  # 8 items: too small to track
    assert sorted(r["owner"] for r in MemoryStore.records("sessions")).count("12") == 0
    assert len(MemoryStore.records("sessions")) == 6
    assert lethe.ledger.completion_record_count(request_id) == 2
    assert status["completed_at"] is not None


def test_redelivered_task_does_nothing(running, s3_endpoint: str, bucket: str) -> None:
    """Sending a finished task's message again writes no second record and deletes nothing more."""
    lethe = running()
    request_id, _ = lethe.submit({"user_id": "12"})
    assert lethe.wait(request_id, timeout=60)["status"] == "completed"
    put_objects(s3_endpoint, bucket, ["users/12/written-later.jpg"])  # data written after the erasure
    with lethe.ledger.sessions() as s:
        task = s.query(Task).filter_by(request_id=request_id, target="profile-photos").one()
    for _ in range(2):
        lethe.app.send_task("lethe.purge", args=[task.id], queue="purge.s3")
    time.sleep(1.5)
    assert version_keys(s3_endpoint, bucket, "users/12/") == ["users/12/written-later.jpg"]
    assert lethe.ledger.completion_record_count(request_id) == 2
    status = lethe.ledger.status(request_id)
    assert next(t for t in status["tasks"] if t["target"] == "profile-photos")["attempts"] == 1


def test_retryable_errors_are_retried_until_success(running) -> None:
    """A target failing twice with a retryable error completes on the third attempt."""
    lethe = running(fail_times=2)
    request_id, _ = lethe.submit({"user_id": "7"})
    status = lethe.wait(request_id, timeout=60)
    assert status["status"] == "completed", status
    sessions = next(t for t in status["tasks"] if t["target"] == "sessions")
    assert sessions["attempts"] == 3 and sessions["error"] is None
    actions = [e["action"] for e in lethe.ledger.audit_trail(request_id)]
    assert actions.count("task.retrying") == 2


def test_permanent_error_fails_the_task_and_keeps_the_error(running, s3_endpoint: str, bucket: str) -> None:
    """A missing bucket fails the task for good, the error has no identifier, dependents never run."""
    lethe = running(bucket_name="no-such-bucket-here")
    request_id, _ = lethe.submit({"user_id": "1234"})
    status = lethe.wait(request_id, timeout=60)
    assert status["status"] == "failed"
    photos, sessions = status["tasks"]
    assert photos["status"] == "failed" and photos["attempts"] == 1
    assert "NoSuchBucket" in photos["error"] and "1234" not in photos["error"]
    assert sessions["status"] == "pending"
    assert len(MemoryStore.records("sessions")) == 8
    assert versions_per_owner(s3_endpoint, bucket)["1234"] == 8


def test_bulk_erasure_erases_exactly_its_subjects_once(running, s3_endpoint: str, bucket: str) -> None:
    """submit_many over three of four users: one message carries each wave of tasks, an injected failure is
    retried on its own, every task records once, and the fourth user (123) keeps everything."""
    lethe = running(fail_times=2)
    request_ids = lethe.submit_many([{"user_id": u} for u in ("12", "1234", "7")])
    counts = lethe.wait_many(request_ids, timeout=90, interval=0.2)
    assert counts == {"completed": 3}, counts
    statuses = [lethe.ledger.status(r) for r in request_ids]
    attempts = [t["attempts"] for st in statuses for t in st["tasks"] if t["target"] == "sessions"]
    assert sum(attempts) == 3 + 2, attempts  # the two injected failures, each retried once
    assert all(lethe.ledger.completion_record_count(r) == 2 for r in request_ids)
    assert set(versions_per_owner(s3_endpoint, bucket)) == {"123"}
    assert versions_per_owner(s3_endpoint, bucket)["123"] == 8
    assert sorted(r["owner"] for r in MemoryStore.records("sessions")) == ["123", "123"]
    assert lethe.ledger.verify() == []


def test_a_batch_past_its_time_budget_hands_the_rest_to_the_queue(running, s3_endpoint: str, bucket: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With no time budget, each message runs one task and sends the rest on: all still complete, once."""
    import workers.tasks

    monkeypatch.setattr(workers.tasks, "BATCH_SECONDS", 0.0)
    lethe = running()
    sent: list[list[str]] = []
    send = lethe.send
    monkeypatch.setattr(lethe, "send", lambda dispatches, **kw: (sent.append([d.kind for d in dispatches]),
                                                               send(dispatches, **kw)))
    request_ids = lethe.submit_many([{"user_id": u} for u in USERS])
    assert lethe.wait_many(request_ids, timeout=90, interval=0.2) == {"completed": 4}
    assert sent[0] == ["s3"] * 4 and ["s3"] * 3 in sent[1:]  # 4 photo tasks in one message; 3 handed on
    assert all(lethe.ledger.completion_record_count(r) == 2 for r in request_ids)
    assert versions_per_owner(s3_endpoint, bucket) == {} and MemoryStore.records("sessions") == []


def test_reconcile_recovers_a_lost_message(pipeline, running) -> None:
    """A task whose message never reached the broker is re-sent by reconcile after its lease."""
    lethe = running()
    datamap = lethe.load_map()
    request_id, _, _dispatches = file_request(lethe.ledger, datamap, datamap.parse_subject({"user_id": "123"}))
    time.sleep(0.5)
    assert lethe.ledger.status(request_id)["status"] == "planned"  # nothing was sent
    with lethe.ledger.sessions.begin() as s:
        s.execute(update(Task).where(Task.request_id == request_id).values(lease_expires_at=None))
    assert lethe.reconcile() == 1
    assert lethe.wait(request_id, timeout=60)["status"] == "completed"


def test_dry_run_counts_and_deletes_nothing(running, s3_endpoint: str, bucket: str) -> None:
    """A dry run reports what would go, completes, deletes nothing and writes no record."""
    lethe = running()
    before = versions_per_owner(s3_endpoint, bucket)
    request_id, _ = lethe.submit({"user_id": "12"}, dry_run=True)
    status = lethe.wait(request_id, timeout=60)
    assert status["status"] == "completed" and status["dry_run"] is True
    assert status["tasks"][0]["deleted"] == before["12"]
    assert versions_per_owner(s3_endpoint, bucket) == before
    assert len(MemoryStore.records("sessions")) == 8
    assert lethe.ledger.completion_record_count(request_id) == 0


def test_no_raw_identifier_survives_anywhere(running, caplog: pytest.LogCaptureFixture) -> None:
    """After a full erasure the ledger database and every log record hold no trace of the raw identifier."""
    from orchestrator.ledger.models import Base

    caplog.set_level("DEBUG")
    raw = "90210777"
    lethe = running()
    request_id, _ = lethe.submit({"user_id": raw})
    assert lethe.wait(request_id, timeout=60)["status"] == "completed"
    with lethe.ledger.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                assert raw not in repr(tuple(row)), table.name
    for record in caplog.records:
        assert raw not in record.getMessage() and raw not in repr(record.msg)
    assert lethe.ledger.verify() == []
    assert lethe.ledger.certificate(request_id)["subject_hashes"]["user_id"]


def test_large_purge_reports_progress(running) -> None:
    """A purge over a thousand items records its estimate and ends with done = deleted."""
    lethe = running()
    MemoryStore.add("sessions", *({"owner": "7", "n": n} for n in range(1_500)))
    request_id, _ = lethe.submit({"user_id": "7"})
    status = lethe.wait(request_id, timeout=60)
    sessions = next(t for t in status["tasks"] if t["target"] == "sessions")
    assert sessions["progress"] == {"done": 1_502, "estimated": 1_502}


def test_long_purge_runs_as_several_messages_and_counts_them_all(pipeline, s3_endpoint: str, bucket: str) -> None:
    """With a zero time slice every 1,000-version round hands the task back; the record counts every slice."""
    put_objects(s3_endpoint, bucket, [f"users/1234/bulk-{i:04d}.jpg" for i in range(550)], versions=2)
    lethe = pipeline()
    lethe.settings.task_slice_seconds = 0
    before = versions_per_owner(s3_endpoint, bucket)
    with lethe.embedded_worker():
        request_id, _ = lethe.submit({"user_id": "1234"})
        status = lethe.wait(request_id, timeout=120)
    assert status["status"] == "completed", status
    photos = status["tasks"][0]
    assert photos["deleted"] == before["1234"] == 1_108 and photos["attempts"] == 1
    assert versions_per_owner(s3_endpoint, bucket)["1234"] == 0
    assert versions_per_owner(s3_endpoint, bucket)["123"] == before["123"]
    continued = [e for e in lethe.ledger.audit_trail(request_id) if e["action"] == "task.continued"]
    assert len(continued) >= 2 and continued[0]["detail"]["deleted_so_far"] == 1_000
    assert lethe.ledger.verify() == []
