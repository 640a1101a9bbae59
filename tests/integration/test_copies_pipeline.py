"""Issue 22 "done when": a replica bucket declared under ``replicas:`` is erased and verified with the primary,
and the certificate dates ``gone_by`` by the primary's backups. A real Celery worker on Redis, the ledger on
PostgreSQL, moto's S3 server over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.certificates import canonical_json, parse_public_keys, rfc3339, verify_certificate
from orchestrator.service import Lethe
from orchestrator.testing import FAKE_AWS_ENV, make_bucket, put_objects, versions_per_owner
from tests.fixtures.lethe import SUBJECT_KEY
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - name: profile-photos
    kind: s3
    endpoint_url: {endpoint}
    bucket: {primary}
    prefix: "users/{{user_id}}/"
    replicas:
      - {{bucket: {replica}}}
    backups: {{retention_days: 35, note: "AWS Backup, continuous"}}
  - name: sessions
    kind: memory
    store: sessions
    match: {{owner: "{{user_id}}"}}
    after: [profile-photos]
"""
USERS = ["12", "123", "1234", "7"]


@pytest.fixture
def copies(s3_endpoint: str, pg_database: str, redis_broker: str, write_map: Callable[[str], Path],
           make_lethe: Callable[..., Lethe]) -> Iterator[tuple[Lethe, str, str]]:
    """A primary bucket and its replica holding the same objects, a Lethe with a worker over them."""
    primary, replica = (f"t-{uuid.uuid4().hex[:16]}" for _ in range(2))
    for name in (primary, replica):
        make_bucket(s3_endpoint, name, versioned=True)
        put_objects(s3_endpoint, name, [f"users/{u}/p{i}.jpg" for u in USERS for i in range(2)], versions=2)
    MemoryStore.add("sessions", *({"owner": u} for u in USERS))
    path = write_map(MAP.format(endpoint=s3_endpoint, primary=primary, replica=replica))
    lethe = make_lethe(database_url=pg_database, broker_url=redis_broker, data_map=path)
    with lethe.embedded_worker(concurrency=2):
        yield lethe, primary, replica


def test_the_replica_is_erased_and_verified_with_the_primary(copies: tuple[Lethe, str, str], s3_endpoint: str,
                                                             pg_database: str, signing_key_file: Path) -> None:
    lethe, primary, replica = copies
    before = {b: versions_per_owner(s3_endpoint, b) for b in (primary, replica)}
    request_id, _ = lethe.submit({"user_id": "12"})
    status = lethe.wait(request_id, timeout=90)
    assert status["status"] == "completed", status

    for b in (primary, replica):  # the subject gone from both copies, everyone else intact in both
        after = versions_per_owner(s3_endpoint, b)
        assert after["12"] == 0 and before[b]["12"] == 4
        assert {u: after[u] for u in USERS if u != "12"} == {u: before[b][u] for u in USERS if u != "12"}
    assert sorted(r["owner"] for r in MemoryStore.records("sessions")) == ["123", "1234", "7"]

    tasks = {t["target"]: t for t in status["tasks"]}
    assert tasks["profile-photos.replica-1"]["replica_of"] == "profile-photos"
    assert tasks["profile-photos.replica-1"]["deleted"] == tasks["profile-photos"]["deleted"] == 4
    assert set(tasks["sessions"]["after"]) == {"profile-photos", "profile-photos.replica-1"}
    assert lethe.ledger.completion_record_count(request_id) == 3

    cert = lethe.ledger.certificate(request_id)
    rows = {t["target"]: t for t in cert["targets"]}
    assert rows["profile-photos.replica-1"]["replica_of"] == "profile-photos"
    assert rows["profile-photos.replica-1"]["residue"] == 0 and rows["profile-photos.replica-1"]["verified_at"]
    assert "replica_of" not in rows["profile-photos"] and "replica_of" not in rows["sessions"]

    # gone_by = the latest verified purge of the photos (primary and replica) + 35 days of backups.
    purged = max(datetime.fromisoformat(rows[n]["verified_at"]) for n in ("profile-photos", "profile-photos.replica-1"))
    assert rows["profile-photos"]["gone_by"] == rfc3339(purged + timedelta(days=35))
    assert rows["profile-photos.replica-1"]["gone_by"] == rows["profile-photos.replica-1"]["verified_at"]
    assert rows["sessions"]["gone_by"] == rows["sessions"]["verified_at"]
    assert cert["gone_by"] == rows["profile-photos"]["gone_by"]  # the latest of its targets
    assert status["gone_by"] == lethe.ledger.status(request_id)["gone_by"] == cert["gone_by"]
    assert verify_certificate(canonical_json(cert), parse_public_keys(lethe.ledger.public_key_pem())) == cert
    assert lethe.ledger.verify() == []

    # `lethe status` shows them as a user sees them.
    env = {**os.environ, **FAKE_AWS_ENV, "LETHE_DATABASE_URL": pg_database, "LETHE_SUBJECT_KEY": SUBJECT_KEY,
           "LETHE_SIGNING_KEY": str(signing_key_file), "LETHE_DATA_MAP": str(lethe.settings.data_map)}
    shown = subprocess.run([str(Path(sys.executable).with_name("lethe")), "status", request_id], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"gone by {cert['gone_by']}" in shown.stdout
    assert rows["profile-photos.replica-1"]["gone_by"] in shown.stdout and "gone by" in shown.stdout
