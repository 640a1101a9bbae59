"""The value that fills a selector is the normalised value that is hashed: an email in capitals erases the
subject's mail (S3 on moto over HTTP, Redis, PostgreSQL), and a target that matched nothing says so."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.service import Lethe
from orchestrator.testing import put_objects, version_keys

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: [email]
targets:
  - name: mail
    kind: s3
    endpoint_url: {endpoint}
    bucket: {bucket}
    prefix: "mail/{{email}}/"
"""
OTHERS = ["dora@example.com", "carl@example.community", "carl.x@example.com"]


@pytest.fixture
def lethe(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str, write_map: Callable[[str], Path],
          make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    put_objects(s3_endpoint, bucket, [f"mail/{who}/m{i}.eml" for who in ["carl@example.com", *OTHERS]
                                      for i in range(3)], versions=2)
    instance = make_lethe(database_url=pg_database, broker_url=redis_broker,
                          data_map=write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket)))
    with instance.embedded_worker():
        yield instance


def test_an_email_in_capitals_erases_the_subjects_mail(lethe: Lethe, s3_endpoint: str, bucket: str) -> None:
    """CARL@Example.COM is carl@example.com: its 6 versions go, everyone else's stay; asking again for
    carl@example.com finds nothing, and its certificate says so instead of a silent 0."""
    others_before = {who: len(version_keys(s3_endpoint, bucket, f"mail/{who}/")) for who in OTHERS}
    request_id, _ = lethe.submit({"email": "CARL@Example.COM"})
    status = lethe.wait(request_id, timeout=60)
    assert status["status"] == "completed", status
    assert status["tasks"][0]["deleted"] == 6 and status["tasks"][0]["reason"] is None
    assert version_keys(s3_endpoint, bucket, "mail/carl@example.com/") == []
    assert {who: len(version_keys(s3_endpoint, bucket, f"mail/{who}/")) for who in OTHERS} == others_before

    again, created = lethe.submit({"email": "carl@example.com"})
    assert created and again != request_id
    status = lethe.wait(again, timeout=60)
    assert status["status"] == "completed" and status["tasks"][0]["deleted"] == 0
    assert status["subject_hashes"] == lethe.ledger.status(request_id)["subject_hashes"]
    target = lethe.ledger.certificate(again)["targets"][0]
    assert target["deleted"] == 0 and target["reason"].startswith("nothing matched")
    assert lethe.ledger.certificate(request_id)["targets"][0]["reason"] is None
