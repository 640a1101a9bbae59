"""A hold's `until` and reason through the API (PostgreSQL ledger, Redis, moto): an offset is converted to
UTC, a time past the UTC range and a reason naming the subject are 422, never a 500 or a leak."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from tests.orchestrator.api.conftest import auth, wait_for
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration


def test_hold_until_with_an_offset_holds(client: TestClient, worker: None) -> None:
    """Two hours ahead written at -08:00 is two hours ahead: the subject's request waits, nothing deleted."""
    until = (datetime.now(UTC) + timedelta(hours=2)).astimezone(timezone(timedelta(hours=-8)))
    body = {"subject": {"user_id": "12"}, "reason": "litigation hold", "until": until.isoformat()}
    assert client.post("/v1/holds", json=body, headers=auth("admin")).status_code == 201
    held = client.get("/v1/holds", headers=auth("admin")).json()["items"]
    assert held[0]["active"] and datetime.fromisoformat(held[0]["until"]) == until
    assert held[0]["until"].endswith("Z")
    rid = client.post("/v1/erasure-requests", json={"subject": {"user_id": "12"}}, headers=auth("admin")).json()["id"]
    assert wait_for(client, rid, frozenset({"on_hold"}))["status"] == "on_hold"
    assert [r["owner"] for r in MemoryStore.records("sessions")].count("12") == 2


@pytest.mark.parametrize("until", ["9999-12-31T23:59:59-14:00", "not a time", "2026-13-01T00:00:00Z"])
def test_hold_until_out_of_range_is_422(client: TestClient, until: str) -> None:
    body = {"subject": {"user_id": "12"}, "reason": "litigation hold", "until": until}
    response = client.post("/v1/holds", json=body, headers=auth("admin"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"]
    assert client.get("/v1/holds", headers=auth("admin")).json()["items"] == []


def test_hold_reason_naming_the_subject_is_422(client: TestClient) -> None:
    body = {"subject": {"user_id": "90210777"}, "reason": "subject 90210777 sued us"}
    response = client.post("/v1/holds", json=body, headers=auth("admin"))
    assert response.status_code == 422, response.text
    assert "90210777" not in response.text
    assert client.get("/v1/holds", headers=auth("admin")).json()["items"] == []
