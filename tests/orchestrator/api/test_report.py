"""`GET /v1/erasure-requests/{id}/report`: a failed request's signed report of what was and was not erased,
on PostgreSQL, Redis and moto's S3 over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.certificates import CertificateError, canonical_json, parse_public_keys, verify_certificate
from orchestrator.service import Lethe
from tests.orchestrator.api.conftest import auth, missing_bucket, wait_for

pytestmark = pytest.mark.integration
RAW = "90210777"


def test_a_failed_requests_report_verifies_and_names_the_failed_target(
        client: TestClient, lethe: Lethe, worker: None, point_map: Callable[[str], Path]) -> None:
    """profile-photos fails (its bucket is missing), sessions never ran: the report says so per target, with
    the error, verifies with the published public key, and holds no raw identifier. A requester reads the
    report of its own request only; one changed byte and it no longer verifies."""
    point_map(missing_bucket())
    filed = client.post("/v1/erasure-requests", json={"subject": {"user_id": RAW}}, headers=auth("requester"))
    rid = filed.json()["id"]
    assert wait_for(client, rid)["status"] == "failed"

    response = client.get(f"/v1/erasure-requests/{rid}/report", headers=auth("requester"))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["kind"] == "erasure-report" and report["request_id"] == rid and report["status"] == "failed"
    photos, sessions = report["targets"]
    assert photos["target"] == "profile-photos" and photos["status"] == "failed" and photos["attempts"] == 1
    assert "NoSuchBucket" in photos["error"]
    assert sessions["status"] == "pending" and sessions["deleted"] is None  # never ran: nothing counted
    assert report["erased"] == [] and report["not_erased"] == ["profile-photos", "sessions"]
    assert report["subject_hashes"] == lethe.ledger.status(rid)["subject_hashes"]
    assert RAW not in response.text

    keys = parse_public_keys(lethe.ledger.public_key_pem())
    assert verify_certificate(response.content, keys)["key_id"] == report["key_id"]
    forged = canonical_json({**report, "not_erased": []})
    with pytest.raises(CertificateError, match="bad signature"):
        verify_certificate(forged, keys)

    other = client.get(f"/v1/erasure-requests/{rid}/report", headers={"Authorization": "Bearer nobody"})
    assert other.status_code == 401
    unknown = client.get("/v1/erasure-requests/00000000-0000-4000-8000-000000000000/report",
                         headers=auth("operator"))
    assert unknown.status_code == 404
    assert json.loads(response.content)["issued_at"].endswith("Z")
