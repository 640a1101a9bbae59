"""data_written on the real pipeline (Redis, PostgreSQL, S3 over HTTP to moto): only identifiers erased
before are erased again. And every event is traceable to the request it made."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection

from orchestrator.events import (
    DEAD_QUEUE,
    declare,
    intake_queue,
    publish_data_written,
    publish_erasure_request,
    request_for_event,
)
from orchestrator.ledger.models import Request
from orchestrator.service import Lethe
from orchestrator.testing import put_objects, version_keys
from tests.fixtures.events import KEY, request_ids, running_intake, wait_for

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {{user_id: "[0-9]+", email: "[^@]+@[^@]+"}}
targets:
  - {{name: photos, kind: s3, endpoint_url: "{endpoint}", bucket: {bucket}, prefix: "users/{{user_id}}/"}}
  - {{name: mail, kind: s3, endpoint_url: "{endpoint}", bucket: {bucket}, prefix: "mail/{{email}}/"}}
"""


@pytest.fixture
def lethe(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str, write_map: Callable[[str], Path],
          make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    """A Lethe on Redis + PostgreSQL over S3, with an in-process worker and the intake running."""
    instance = make_lethe(database_url=pg_database, broker_url=redis_broker, event_key=KEY.decode(),
                          data_map=write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket)))
    with Connection(redis_broker) as conn:
        declare(conn)
    with instance.embedded_worker(), running_intake(instance, redis_broker):
        yield instance


def test_data_written_re_erases_only_identifiers_erased_before(lethe: Lethe, s3_endpoint: str, bucket: str,
                                                               redis_broker: str) -> None:
    """Erase email=bob@…; then data_written {email: bob@…, user_id: 555}: bob's new mail is erased again,
    user 555's photos - an identifier never erased - stay, as does everyone else's data."""
    put_objects(s3_endpoint, bucket, ["mail/bob@example.com/a.eml", "mail/ann@example.com/a.eml",
                                      "users/555/p.jpg", "users/5555/p.jpg", "users/7/p.jpg"], versions=2)
    first, _ = lethe.submit({"email": "bob@example.com"})
    assert lethe.wait(first, timeout=60)["status"] == "completed"
    assert not version_keys(s3_endpoint, bucket, "mail/bob@example.com/")
    put_objects(s3_endpoint, bucket, ["mail/bob@example.com/new.eml"])  # written after the erasure

    both = {"email": "bob@example.com", "user_id": "555"}
    photos_id = publish_data_written(redis_broker, both, "photos", source="photo-service", key=KEY)
    mail_id = publish_data_written(redis_broker, both, "mail", source="mail-service", key=KEY)
    never_id = publish_data_written(redis_broker, {"user_id": "7"}, "photos", source="photo-service", key=KEY)
    follow_ups = wait_for(lambda: [i for i in request_ids(lethe) if i != first] if len(request_ids(lethe)) == 3
                          else None)
    for request_id in follow_ups:
        status = lethe.wait(request_id, timeout=60)
        assert status["status"] == "completed"
        # the latest erasure of bob@…: the first request, or the other follow-up if it completed first
        assert lethe.ledger.audit_trail(request_id)[0]["detail"]["follow_up_of"] in {first, *follow_ups} - {request_id}
    time.sleep(1)  # the event for user 7 (never erased) is acknowledged and files nothing
    assert len(request_ids(lethe)) == 3
    assert request_for_event(lethe.ledger, "photo-service", never_id) is None

    assert not version_keys(s3_endpoint, bucket, "mail/bob@example.com/")  # erased again
    assert len(version_keys(s3_endpoint, bucket, "users/555/")) == 2  # never erased: untouched
    for other in ("mail/ann@example.com/", "users/5555/", "users/7/"):
        assert len(version_keys(s3_endpoint, bucket, other)) == 2
    photos_request = request_for_event(lethe.ledger, "photo-service", photos_id)
    assert photos_request is not None
    with lethe.ledger.sessions() as s:  # only the erased identifier was filed: the photos target skipped
        request = s.get(Request, photos_request)
        assert request is not None and list(request.subject_hashes) == ["email"]
    assert {t["target"]: t["status"] for t in lethe.ledger.status(photos_request)["tasks"]} == {"photos": "skipped"}
    assert request_for_event(lethe.ledger, "mail-service", mail_id) in follow_ups


def test_the_intake_logs_the_request_it_filed_for_each_event(lethe: Lethe, redis_broker: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Source, event id and request id in one log line (no identifier); the lookup finds the same request."""
    caplog.set_level("INFO")
    event_id = publish_erasure_request(redis_broker, {"user_id": "4242"}, source="account-service", key=KEY)
    request_id = wait_for(lambda: request_for_event(lethe.ledger, "account-service", event_id))
    assert request_for_event(lethe.ledger, "account-service", "another-id") is None
    assert request_for_event(lethe.ledger, "other-service", event_id) is None
    lines = wait_for(lambda: [r.msg for r in caplog.records
                              if isinstance(r.msg, dict) and r.msg.get("event") == "intake.event"])
    assert lines[0]["request_id"] == request_id
    assert (lines[0]["source"], lines[0]["event_id"], lines[0]["outcome"]) == ("account-service", event_id, "filed")
    assert "4242" not in repr(lines)
    with Connection(redis_broker) as conn:
        assert DEAD_QUEUE(conn.default_channel).queue_declare().message_count == 0
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 0
