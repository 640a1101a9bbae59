"""Dataset-scoped erasure: a whole data source withdrawn as one tracked, approved, certified request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.datamap import DataMap, DataMapError
from orchestrator.ledger import LedgerError
from orchestrator.service import Lethe
from orchestrator.testing import put_objects, version_keys
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: [user_id]
targets:
  - {{name: photos, kind: s3, endpoint_url: "{endpoint}", bucket: {bucket}, prefix: "users/{{user_id}}/"}}
  - {{name: faces, kind: memory, store: faces, match: {{owner: "{{user_id}}"}}, after: [photos]}}
  - {{name: sessions, kind: memory, store: sessions, match: {{owner: "{{user_id}}"}}}}
datasets:
  okcupid-2014:
    photos: {{prefix: "sources/okcupid-2014/"}}
    faces: {{match: {{source: okcupid-2014}}}}
"""


@pytest.fixture
def lethe(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str,
          write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    """A running pipeline with two sources in the bucket and the face store."""
    put_objects(s3_endpoint, bucket, [f"sources/okcupid-2014/{i}.jpg" for i in range(12)], versions=2)
    put_objects(s3_endpoint, bucket, [f"sources/consented/{i}.jpg" for i in range(3)])
    put_objects(s3_endpoint, bucket, ["users/1/a.jpg"])
    MemoryStore.add("faces", *({"owner": str(i), "source": "okcupid-2014"} for i in range(5)),
                    {"owner": "9", "source": "consented"})
    instance = make_lethe(database_url=pg_database, broker_url=redis_broker,
                          data_map=write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket)))
    with instance.embedded_worker():
        yield instance


def test_dataset_erasure_waits_for_approval_then_removes_only_that_source(
        lethe: Lethe, s3_endpoint: str, bucket: str) -> None:
    """Only the dataset's targets are planned; nothing goes before approval; then exactly the source goes."""
    dry_id, _ = lethe.submit({}, dataset="okcupid-2014", dry_run=True)
    dry = lethe.wait(dry_id, timeout=60)
    assert dry["status"] == "completed" and dry["scope"] == "dataset" and dry["dataset"] == "okcupid-2014"
    assert {t["target"]: t["deleted"] for t in dry["tasks"]} == {"photos": 24, "faces": 5}

    request_id, _ = lethe.submit({}, dataset="okcupid-2014")
    status = lethe.wait(request_id, timeout=60)
    assert status["status"] == "awaiting_approval"
    assert len(version_keys(s3_endpoint, bucket, "sources/okcupid-2014/")) == 24
    lethe.approve(request_id, actor="cli:admin")
    status = lethe.wait(request_id, timeout=60)
    assert status["status"] == "completed"
    assert all(t["progress"] is None for t in status["tasks"])  # small purges are not tracked
    assert version_keys(s3_endpoint, bucket, "sources/okcupid-2014/") == []
    assert len(version_keys(s3_endpoint, bucket, "sources/consented/")) == 3
    assert version_keys(s3_endpoint, bucket, "users/") == ["users/1/a.jpg"]
    assert [r["source"] for r in MemoryStore.records("faces")] == ["consented"]
    cert = lethe.ledger.certificate(request_id)
    assert cert["scope"] == "dataset" and cert["dataset"] == "okcupid-2014" and "subject_hashes" not in cert
    assert lethe.ledger.verify() == []


def test_unknown_dataset_is_refused(lethe: Lethe) -> None:
    """A dataset the map does not declare is a clear error and files nothing."""
    with pytest.raises(LedgerError, match="unknown dataset 'myspace'"):
        lethe.submit({}, dataset="myspace")
    assert lethe.ledger.list_requests()["items"] == []


@pytest.mark.parametrize(("selector", "message"), [
    ('{prefix: "sources/{user_id}/"}', "literal"),
    ('{prefix: "sources"}', "ending at '/'"),
    ('{prefix: "/"}', "ending at '/'"),
    ('{bukket: x}', "unknown field"),
    ('{prefix: ""}', "empty"),
])
def test_unsafe_dataset_selectors_are_refused(selector: str, message: str) -> None:
    """Dataset selectors must be literal, known, non-empty, and S3 prefixes end at a separator."""
    text = MAP.format(endpoint="http://127.0.0.1:9", bucket="bkt").replace(
        '{prefix: "sources/okcupid-2014/"}', selector)
    with pytest.raises(DataMapError, match=message):
        DataMap.parse(text)
