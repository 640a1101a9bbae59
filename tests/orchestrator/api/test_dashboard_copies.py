"""gone_by and replica_of through the HTTP API's status object and on the dashboard's request page."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.api import create_app
from orchestrator.service import Lethe
from orchestrator.testing import make_bucket, put_objects
from tests.orchestrator.api.conftest import auth, wait_for
from tests.orchestrator.api.test_dashboard import sign_in

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
    replicas: [{{bucket: {replica}, name: photos-eu}}]
    backups: {{retention_days: 35}}
"""


def test_status_and_dashboard_show_gone_by(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str,
                                           write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe],
                                           tokens_file: Path) -> None:
    replica = f"t-{uuid.uuid4().hex[:16]}"
    make_bucket(s3_endpoint, replica, versioned=True)
    for b in (bucket, replica):
        put_objects(s3_endpoint, b, ["users/12/a.jpg", "users/123/a.jpg"])
    lethe = make_lethe(database_url=pg_database, broker_url=redis_broker, api_tokens=tokens_file,
                       data_map=write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket, replica=replica)))
    with TestClient(create_app(lethe)) as client, lethe.embedded_worker(concurrency=2):
        rid = client.post("/v1/erasure-requests", json={"subject": {"user_id": "12"}},
                          headers=auth("admin")).json()["id"]
        status = wait_for(client, rid, timeout=60)
        assert status["status"] == "completed", status
        tasks = {t["target"]: t for t in status["tasks"]}
        assert tasks["photos-eu"]["replica_of"] == "profile-photos" and tasks["profile-photos"]["replica_of"] is None
        assert status["gone_by"] == tasks["profile-photos"]["gone_by"] > tasks["photos-eu"]["gone_by"]
        assert client.get(f"/v1/erasure-requests/{rid}/certificate", headers=auth("admin")).json()["gone_by"] \
            == status["gone_by"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "gone_by" in schema["StatusOut"]["properties"] and "replica_of" in schema["TaskOut"]["properties"]

        sign_in(client, "admin")
        page = client.get(f"/requests/{rid}").text
        assert 'id="gone-by"' in page and "replica of profile-photos" in page
        assert f'title="{status["gone_by"]}"' in page and f'title="{tasks["photos-eu"]["gone_by"]}"' in page
