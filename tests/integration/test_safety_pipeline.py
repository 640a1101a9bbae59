"""Safety through the real worker: blast-radius approval and S3 Object Lock, on Redis, PostgreSQL and S3."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.service import Lethe
from orchestrator.testing import put_objects, versions_per_owner
from workers.targets.s3 import s3_client

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
    max_items: 5
"""


@pytest.fixture
def lethe(s3_endpoint: str, pg_database: str, redis_broker: str, write_map: Callable[[str], Path],
          make_lethe: Callable[..., Lethe]) -> Iterator[tuple[Lethe, str]]:
    """A running pipeline over an Object Lock bucket where user 12 has 8 versions and 123 has 2."""
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint, None).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    put_objects(s3_endpoint, bucket, [f"users/12/p{i}.jpg" for i in range(4)], versions=2)
    put_objects(s3_endpoint, bucket, ["users/123/p.jpg", "users/5/p.jpg"], versions=1)
    instance = make_lethe(database_url=pg_database, broker_url=redis_broker,
                          data_map=write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket)))
    with instance.embedded_worker():
        yield instance, bucket


def test_purge_over_max_items_waits_for_approval(lethe: tuple[Lethe, str], s3_endpoint: str) -> None:
    """8 versions over max_items 5 wait for an admin and delete nothing; approval erases them all."""
    app, bucket = lethe
    dry_id, _ = app.submit({"user_id": "12"}, dry_run=True)
    dry = app.wait(dry_id, timeout=60)
    assert dry["status"] == "completed" and "would wait for approval" in dry["tasks"][0]["reason"]

    request_id, _ = app.submit({"user_id": "12"})
    status = app.wait(request_id, timeout=60)
    assert status["status"] == "awaiting_approval"
    assert status["tasks"][0]["status"] == "awaiting_approval"
    assert versions_per_owner(s3_endpoint, bucket)["12"] == 8
    app.approve(request_id, actor="cli:admin")
    assert app.wait(request_id, timeout=60)["status"] == "completed"
    after = versions_per_owner(s3_endpoint, bucket)
    assert after["12"] == 0 and after["123"] == 1 and after["5"] == 1


def test_object_lock_is_reported_held_not_retried(lethe: tuple[Lethe, str], s3_endpoint: str) -> None:
    """A version under S3 legal hold makes the target held, with the reason; the rest of the subject goes."""
    app, bucket = lethe
    client = s3_client(s3_endpoint, None)
    version = client.put_object(Bucket=bucket, Key="users/5/contract.pdf", Body=b"signed")["VersionId"]
    client.put_object_legal_hold(Bucket=bucket, Key="users/5/contract.pdf", VersionId=version,
                                 LegalHold={"Status": "ON"})
    request_id, _ = app.submit({"user_id": "5"})
    status = app.wait(request_id, timeout=60)
    assert status["status"] == "on_hold"
    task = status["tasks"][0]
    assert task["status"] == "held" and task["attempts"] == 1
    assert "Object Lock" in task["reason"] and "legal hold" in task["reason"]
    after = versions_per_owner(s3_endpoint, bucket)
    assert after["5"] == 1 and after["12"] == 8 and after["123"] == 1

    client.put_object_legal_hold(Bucket=bucket, Key="users/5/contract.pdf", VersionId=version,
                                 LegalHold={"Status": "OFF"})
    app.retry(request_id)
    assert app.wait(request_id, timeout=60)["status"] == "completed"
    assert versions_per_owner(s3_endpoint, bucket)["5"] == 0
