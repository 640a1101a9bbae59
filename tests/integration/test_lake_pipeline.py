"""The three lake kinds end to end: requests through a real Celery worker on Redis, the ledger on
PostgreSQL; Delta and Iceberg tables on disk, a Parquet directory on moto's S3 server over HTTP.

Each store is seeded as its contract test seeds it (subject 12 beside its look-alikes 123, 1234, 112, and
rows of nobody). A dry run counts and deletes nothing; the real run erases 12 from all three, records
bytes_reclaimed for each, and leaves every other subject's rows as they were.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.service import Lethe
from orchestrator.testing import make_bucket
from tests.contract.base import OTHERS, SUBJECT
from tests.contract.test_delta_contract import DeltaStore
from tests.contract.test_iceberg_contract import IcebergStore
from tests.contract.test_parquet_contract import ParquetStore

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - name: manifest
    kind: delta
    uri: {delta}
    where: {{owner: "{{user_id}}"}}
  - name: faces-lake
    kind: iceberg
    catalog: {catalog}
    table: lake.faces
    where: {{owner: "{{user_id}}"}}
  - name: events-lake
    kind: parquet
    uri: {parquet}
    endpoint_url: {endpoint}
    where: {{owner: "{{user_id}}"}}
    after: [manifest]
"""


@pytest.fixture
def lake(tmp_path: Path, s3_endpoint: str) -> Iterator[dict[str, object]]:
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_endpoint, bucket, versioned=False)
    stores: dict[str, object] = {
        "manifest": DeltaStore(tmp_path / "delta", integer=False),
        "faces-lake": IcebergStore(tmp_path / "iceberg", integer=True),
        "events-lake": ParquetStore(f"s3://{bucket}/events", s3_endpoint, integer=False),
    }
    for store in stores.values():
        for uid in (SUBJECT, *OTHERS):
            store.seed(uid)  # type: ignore[attr-defined]
    yield stores
    stores["faces-lake"].catalog.engine.dispose()  # type: ignore[attr-defined]


@pytest.fixture
def lethe(lake: dict[str, object], s3_endpoint: str, pg_database: str, redis_broker: str,
          write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    iceberg = lake["faces-lake"]
    path = write_map(MAP.format(delta=lake["manifest"].uri, catalog=json.dumps(iceberg.catalog_props),  # type: ignore[attr-defined]
                                parquet=lake["events-lake"].uri, endpoint=s3_endpoint))  # type: ignore[attr-defined]
    service = make_lethe(database_url=pg_database, broker_url=redis_broker, data_map=path)
    with service.embedded_worker(concurrency=2):
        yield service


def counts(lake: dict[str, object]) -> dict[str, dict[str, int]]:
    return {name: {uid: store.remaining(uid) for uid in (SUBJECT, *OTHERS)}  # type: ignore[attr-defined]
            for name, store in lake.items()}


def test_a_dry_run_counts_and_deletes_nothing(lethe: Lethe, lake: dict[str, object]) -> None:
    before = counts(lake)
    request_id, _ = lethe.submit({"user_id": SUBJECT}, dry_run=True)
    status = lethe.wait(request_id, timeout=120)
    assert status["status"] == "completed" and status["dry_run"] is True
    assert {t["target"]: t["deleted"] for t in status["tasks"]} == {n: c[SUBJECT] for n, c in before.items()}
    assert counts(lake) == before


def test_an_erasure_reaches_every_lake_and_nobody_else(lethe: Lethe, lake: dict[str, object]) -> None:
    before = counts(lake)
    request_id, _ = lethe.submit({"user_id": SUBJECT})
    status = lethe.wait(request_id, timeout=120)
    assert status["status"] == "completed", status
    assert {t["target"]: (t["deleted"], t["level"]) for t in status["tasks"]} == {
        name: (c[SUBJECT], "bytes_reclaimed") for name, c in before.items()}
    after = counts(lake)
    assert all(c[SUBJECT] == 0 for c in after.values())
    assert {n: {u: c[u] for u in OTHERS} for n, c in after.items()} == {
        n: {u: c[u] for u in OTHERS} for n, c in before.items()}
    assert lake["manifest"].rows_in_every_file(SUBJECT) == 0  # type: ignore[attr-defined]
    assert lake["faces-lake"].rows_in_every_file(SUBJECT) == 0  # type: ignore[attr-defined]
    certificate = json.dumps(lethe.ledger.certificate(request_id))
    assert all(name in certificate for name in lake) and "bytes_reclaimed" in certificate
