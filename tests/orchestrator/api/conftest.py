"""A lethe API over PostgreSQL, Redis and moto's S3 server, with tokens for each role."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrator.api import create_app
from orchestrator.ledger import TERMINAL_REQUEST
from orchestrator.service import Lethe
from orchestrator.testing import put_objects
from workers.targets.memory import MemoryStore

TOKENS = {
    "requester": "req-7c1f0e3b9a5d4c2e8f6a",
    "operator": "ops-2b8d6f4a0c9e7b5d3f1a",
    "admin": "adm-9e7c5a3f1d8b6e4c2a0f",
}
NAMES = {"requester": "alice", "operator": "oscar", "admin": "ada"}
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
datasets:
  legacy-sessions:
    sessions: {{match: {{owner: "123"}}}}
"""
USERS = ["12", "123", "90210777"]


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# token role name\n" + "".join(f"{TOKENS[r]} {r} {NAMES[r]}\n" for r in TOKENS))
    return path


@pytest.fixture
def point_map(s3_endpoint: str, write_map: Callable[[str], Path]) -> Callable[[str], Path]:
    """Rewrite the data map so that requests filed from now on erase from this bucket."""
    return lambda bucket: write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket))


@pytest.fixture
def lethe(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str, point_map: Callable[[str], Path],
          make_lethe: Callable[..., Lethe], tokens_file: Path) -> Lethe:
    """A Lethe on PostgreSQL and Redis, its map on the test's bucket; no worker runs unless a test asks."""
    return make_lethe(database_url=pg_database, broker_url=redis_broker, data_map=point_map(bucket),
                      api_tokens=tokens_file)


@pytest.fixture
def client(lethe: Lethe) -> Iterator[TestClient]:
    with TestClient(create_app(lethe)) as c:
        yield c


@pytest.fixture
def worker(lethe: Lethe, s3_endpoint: str, bucket: str) -> Iterator[None]:
    """Seeds the bucket and the memory store, and runs an in-process Celery worker (threads) on Redis."""
    put_objects(s3_endpoint, bucket, [f"users/{u}/p{i}.jpg" for u in USERS for i in range(3)], versions=2)
    put_objects(s3_endpoint, bucket, [f"users/{u}/gone.jpg" for u in USERS], delete_marker=True)
    MemoryStore.add("sessions", *({"owner": u, "n": n} for u in USERS for n in range(2)))
    with lethe.embedded_worker(concurrency=2):
        yield


def missing_bucket() -> str:
    return f"missing-{uuid.uuid4().hex[:12]}"


def wait_for(client: TestClient, request_id: str, statuses: frozenset[str] = TERMINAL_REQUEST,
             timeout: float = 30) -> dict[str, Any]:
    """Poll the API (as an operator, who reads every request) until the request reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("operator"))
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        if status["status"] in statuses or time.monotonic() > deadline:
            return status
        time.sleep(0.1)
