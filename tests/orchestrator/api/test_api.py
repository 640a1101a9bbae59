"""The /v1 API over PostgreSQL, Redis, moto's S3 server and an in-process worker."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator import certificates
from orchestrator.api import auth as auth_module
from orchestrator.api import create_app
from orchestrator.api.metrics import METRIC_NAMES
from orchestrator.service import Lethe
from orchestrator.testing import make_bucket
from tests.orchestrator.api.conftest import NAMES, TOKENS, auth, missing_bucket, wait_for
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration
SUBJECT = {"subject": {"user_id": "12"}}


def error_of(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


def test_healthz_and_openapi_are_open(client: TestClient) -> None:
    """/healthz and /openapi.json answer without a token; the schema lists every SPEC route."""
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.head("/healthz").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {"/v1/erasure-requests", "/v1/erasure-requests/{request_id}",
                          "/v1/erasure-requests/{request_id}/retry", "/v1/erasure-requests/{request_id}/cancel",
                          "/v1/erasure-requests/{request_id}/certificate", "/healthz", "/metrics"}
    assert not any(p in paths for p in ("/", "/login", "/overview"))  # the dashboard is not API


def test_a_known_bearer_token_is_required(client: TestClient) -> None:
    """No token, an unknown one or another scheme is 401 with a Bearer challenge, and nothing is created."""
    for headers in [{}, {"Authorization": "Bearer not-a-known-token-at-all"}, {"Authorization": "Bearer "},
                    {"Authorization": f"Basic {TOKENS['admin']}"}, {"Authorization": f"Bearer {TOKENS['admin']}x"},
                    {"Authorization": TOKENS["admin"]}]:
        for method, path in [("post", "/v1/erasure-requests"), ("get", "/v1/erasure-requests"),
                             ("get", f"/v1/erasure-requests/{uuid.uuid4()}")]:
            response = client.request(method, path, headers=headers, json=SUBJECT)
            assert response.status_code == 401, (headers, path, response.text)
            assert error_of(response)["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/erasure-requests", headers=auth("admin")).json()["items"] == []


@pytest.mark.parametrize(("role", "allowed"), [
    ("requester", {"create", "read"}),
    ("operator", {"read", "retry"}),
    ("admin", {"create", "read", "retry", "cancel"}),
])
def test_roles_may_do_what_the_spec_says(client: TestClient, role: str, allowed: set[str]) -> None:
    """requester creates and reads (its own), operator reads and retries, admin does all; others get 403."""
    rid = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester")).json()["id"]
    calls = {
        "create": ("post", "/v1/erasure-requests", {"subject": {"user_id": "123"}}),
        "read": ("get", f"/v1/erasure-requests/{rid}", None),
        "retry": ("post", f"/v1/erasure-requests/{rid}/retry", None),
        "cancel": ("post", f"/v1/erasure-requests/{rid}/cancel", None),
    }
    for action, (method, path, body) in calls.items():
        response = client.request(method, path, json=body, headers=auth(role))
        if action in allowed:
            # retry of a request without failed tasks is refused by the ledger, not by the role
            assert response.status_code in ({200, 202} if action != "retry" else {409}), (action, response.text)
        else:
            assert response.status_code == 403, (action, response.text)
            assert error_of(response)["code"] == "forbidden"
    for path in ("/v1/erasure-requests", f"/v1/erasure-requests/{rid}/certificate"):
        assert client.get(path, headers=auth(role)).status_code in (200, 409)


def test_tokens_are_compared_in_constant_time(tokens_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured token is compared, on equal-length digests, whichever token (if any) matches."""
    calls: list[tuple[int, int]] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return original(a, b)

    store = auth_module.TokenStore(tokens_file)
    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    for sent in [TOKENS["requester"], TOKENS["admin"], "x", "y" * 500, TOKENS["admin"][:-1]]:
        calls.clear()
        principal = store.lookup(sent)
        assert len(calls) == len(TOKENS) and set(calls) == {(32, 32)}, sent
        assert (principal is not None) == (sent in TOKENS.values())
    assert store.lookup(TOKENS["operator"]) == auth_module.Principal("oscar", auth_module.Role.OPERATOR)


def test_no_token_file_refuses_every_call(lethe: Lethe, make_lethe: Callable[..., Lethe]) -> None:
    """Without LETHE_API_TOKENS every call is 401; /healthz still answers."""
    bare = make_lethe(**{**lethe.settings.model_dump(), "api_tokens": None})
    with TestClient(create_app(bare)) as c:
        response = c.get("/v1/erasure-requests", headers=auth("admin"))
        assert response.status_code == 401 and "LETHE_API_TOKENS" in error_of(response)["message"]
        assert c.get("/healthz").status_code == 200


def test_created_request_completes_and_is_certified(client: TestClient, lethe: Lethe, worker: None) -> None:
    """POST gives 202 and a status object; the worker erases; GET shows it completed; the certificate verifies."""
    response = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester"))
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] in ("planned", "running") and created["scope"] == "subject"
    assert response.headers["location"] == f"/v1/erasure-requests/{created['id']}"
    assert [t["target"] for t in created["tasks"]] == ["profile-photos", "sessions"]
    status = wait_for(client, created["id"])
    assert status["status"] == "completed", status
    photos, sessions = status["tasks"]
    # 3 objects x 2 versions, and 1 version + 1 delete marker
    assert (photos["deleted"], photos["residue"], photos["attempts"]) == (3 * 2 + 2, 0, 1)
    assert sessions["deleted"] == 2
    cert = client.get(f"/v1/erasure-requests/{created['id']}/certificate", headers=auth("operator"))
    assert cert.status_code == 200
    body = cert.json()
    assert body["request_id"] == created["id"] and body["subject_hashes"] == status["subject_hashes"]
    assert certificates.verify(body, lethe.settings.signing_private_key.public_key())
    actors = {e["action"]: e["actor"] for e in lethe.ledger.audit_trail(created["id"])}
    assert actors["request.received"] == f"api:{NAMES['requester']}(requester)"


def test_idempotency_key_replays_and_conflicts(client: TestClient) -> None:
    """Same key and body: 200 and the same request; same key, other body: 409; one request in all."""
    headers = {**auth("requester"), "Idempotency-Key": "ticket-4711"}
    first = client.post("/v1/erasure-requests", json=SUBJECT, headers=headers)
    again = client.post("/v1/erasure-requests", json=SUBJECT, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/erasure-requests", json={"subject": {"user_id": "123"}}, headers=headers)
    assert other.status_code == 409 and error_of(other)["code"] == "idempotency_conflict"
    dry = client.post("/v1/erasure-requests", json={**SUBJECT, "dry_run": True}, headers=headers)
    assert dry.status_code == 409
    assert len(client.get("/v1/erasure-requests", headers=auth("requester")).json()["items"]) == 1


HOSTILE = ["", "*", "?", "..", "12/../123", "users/12", "12\n", "\x1b[2J", "1\u200b2", "1" * 300, " 12", "12%",
           "[12]", "1\x002", "abc", "12\\13"]


def test_hostile_identifiers_are_refused(client: TestClient) -> None:
    """A value that could widen a selector is 422 with the error shape, not echoed, and nothing is created."""
    for value in HOSTILE:
        response = client.post("/v1/erasure-requests", json={"subject": {"user_id": value}}, headers=auth("admin"))
        assert response.status_code == 422, (value, response.text)
        error = error_of(response)
        assert error["code"] == "invalid_identifier" and error["message"].startswith("user_id: "), value
        if len(value.strip()) > 2:  # '*' or '..' may be named as the offending characters; values never are
            assert value not in error["message"]
    assert client.get("/v1/erasure-requests", headers=auth("admin")).json()["items"] == []


BAD_BODIES: list[tuple[object, int, str]] = [
    ({"subject": {"user_id": 12}}, 422, "invalid_identifier"),
    ({"subject": {"email": "a@example.com"}}, 422, "invalid_identifier"),
    ({"subject": {}}, 422, "invalid_identifier"),
    ({}, 422, "invalid_request"),
    ({"subject": {"user_id": "12"}, "regime": "pipl"}, 422, "invalid_request"),
    ({"subject": {"user_id": "12"}, "surprise": 1}, 422, "invalid_request"),
    ({"subject": {"user_id": "12"}, "dry_run": "maybe"}, 422, "invalid_request"),
    ({"subject": "12"}, 422, "invalid_request"),
    ({"dataset": "okcupid-2014"}, 422, "unknown_dataset"),
    ({"dataset": "okcupid-2014", "subject": {"user_id": "12"}}, 422, "invalid_request"),
    ([1, 2], 422, "invalid_request"),
    (None, 422, "invalid_request"),
]


def test_bad_bodies_get_the_error_shape(client: TestClient) -> None:
    """Bad input is a 4xx with {"error": {"code", "message"}} and creates nothing."""
    for body, status, code in BAD_BODIES:
        response = client.post("/v1/erasure-requests", json=body, headers=auth("admin"))
        assert response.status_code == status, (body, response.text)
        assert error_of(response)["code"] == code, body
    assert client.get("/v1/erasure-requests", headers=auth("admin")).json()["items"] == []


def test_malformed_json_headers_and_dataset_roles(client: TestClient) -> None:
    """Broken JSON is 400; a bad Idempotency-Key is 422; dataset scope is admin-only (403 before 422)."""
    broken = client.post("/v1/erasure-requests", content=b'{"subject": ', headers={
        **auth("admin"), "Content-Type": "application/json"})
    assert broken.status_code == 400 and error_of(broken)["code"] == "malformed_json"
    long_key = client.post("/v1/erasure-requests", json=SUBJECT, headers={**auth("admin"),
                                                                          "Idempotency-Key": "k" * 201})
    assert long_key.status_code == 422 and error_of(long_key)["code"] == "invalid_request"
    dataset = client.post("/v1/erasure-requests", json={"dataset": "x"}, headers=auth("requester"))
    assert dataset.status_code == 403
    assert client.get("/v1/no-such-route", headers=auth("admin")).status_code == 404
    wrong_method = client.delete("/v1/erasure-requests", headers=auth("admin"))
    assert wrong_method.status_code == 405 and error_of(wrong_method)["code"] == "method_not_allowed"


def test_unknown_request_is_404(client: TestClient) -> None:
    """Reading, retrying, cancelling or certifying an unknown id is 404 with the error shape."""
    for request_id in [str(uuid.uuid4()), "not-a-uuid", "%00", "1" * 500]:
        base = f"/v1/erasure-requests/{request_id}"
        for method, path, role in [("get", base, "requester"), ("post", f"{base}/retry", "operator"),
                                   ("post", f"{base}/cancel", "admin"), ("get", f"{base}/certificate", "admin")]:
            response = client.request(method, path, headers=auth(role))
            assert response.status_code == 404, (path, response.text)
            assert error_of(response)["code"] == "not_found"


def test_list_is_paginated_newest_first(client: TestClient) -> None:
    """limit and cursor walk every request once, newest first; status filters; bad cursor/status are 4xx."""
    ids = [client.post("/v1/erasure-requests", json={"subject": {"user_id": str(100 + i)}},
                       headers=auth("requester")).json()["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/erasure-requests", params=params, headers=auth("operator")).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    planned = client.get("/v1/erasure-requests", params={"status": "planned"}, headers=auth("operator")).json()
    assert len(planned["items"]) == 5
    assert client.get("/v1/erasure-requests", params={"status": "failed"},
                      headers=auth("operator")).json() == {"items": [], "next": None}
    for params, status in [({"cursor": "bm9wZQ"}, 400), ({"status": "nope"}, 422), ({"limit": 0}, 422),
                           ({"limit": "x"}, 422), ({"cursor": "MjAyNC0wMS0wMVQwMDowMDowMHwx"}, 400)]:
        response = client.get("/v1/erasure-requests", params=params, headers=auth("operator"))
        assert response.status_code == status, (params, response.text)
        error_of(response)


def test_retry_reruns_a_failed_task(client: TestClient, lethe: Lethe, worker: None, s3_endpoint: str,
                                    point_map: Callable[[str], Path]) -> None:
    """A task failed on a missing bucket runs again on retry (attempts 2) and completes once the bucket exists."""
    absent = missing_bucket()
    point_map(absent)
    rid = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester")).json()["id"]
    failed = wait_for(client, rid)
    assert failed["status"] == "failed", failed
    assert failed["tasks"][0]["status"] == "failed" and "NoSuchBucket" in failed["tasks"][0]["error"]
    assert failed["tasks"][0]["attempts"] == 1 and failed["tasks"][1]["status"] == "pending"
    forbidden = client.post(f"/v1/erasure-requests/{rid}/retry", headers=auth("requester"))
    assert forbidden.status_code == 403
    make_bucket(s3_endpoint, absent)
    retried = client.post(f"/v1/erasure-requests/{rid}/retry", headers=auth("operator"))
    assert retried.status_code == 202 and retried.json()["status"] in ("planned", "running")
    done = wait_for(client, rid)
    assert done["status"] == "completed", done
    assert done["tasks"][0]["attempts"] == 2 and done["tasks"][1]["status"] == "completed"
    trail = lethe.ledger.audit_trail(rid)
    assert any(e["action"] == "request.retried" and e["actor"] == "api:oscar(operator)" for e in trail)
    again = client.post(f"/v1/erasure-requests/{rid}/retry", headers=auth("operator"))
    assert again.status_code == 409 and error_of(again)["code"] == "conflict"
    late_cancel = client.post(f"/v1/erasure-requests/{rid}/cancel", headers=auth("admin"))
    assert late_cancel.status_code == 409


def test_cancel_before_execution(client: TestClient, lethe: Lethe) -> None:
    """An admin cancels a request nothing has run for yet; cancelling twice is 409; no certificate."""
    rid = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester")).json()["id"]
    assert client.get(f"/v1/erasure-requests/{rid}/certificate", headers=auth("admin")).status_code == 409
    response = client.post(f"/v1/erasure-requests/{rid}/cancel", headers=auth("admin"))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert {t["status"] for t in response.json()["tasks"]} == {"skipped"}
    assert client.post(f"/v1/erasure-requests/{rid}/cancel", headers=auth("admin")).status_code == 409
    trail = lethe.ledger.audit_trail(rid)
    assert trail[-1]["action"] == "request.cancelled" and trail[-1]["actor"] == "api:ada(admin)"
    cert = client.get(f"/v1/erasure-requests/{rid}/certificate", headers=auth("admin"))
    assert cert.status_code == 409 and "cancelled" in error_of(cert)["message"]


def test_metrics_come_from_the_ledger_without_identifiers(client: TestClient, worker: None) -> None:
    """/metrics is open, names every lethe metric, counts from the ledger, and never shows a raw identifier."""
    raw = "90210777"
    rid = client.post("/v1/erasure-requests", json={"subject": {"user_id": raw}}, headers=auth("admin")).json()["id"]
    assert wait_for(client, rid)["status"] == "completed"
    text = client.get("/metrics").text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert 'lethe_items_erased_total{target="profile-photos"} 8.0' in text
    assert 'lethe_items_erased_total{target="sessions"} 2.0' in text
    assert 'lethe_requests{status="completed"} ' in text and "lethe_ledger_up 1.0" in text
    assert 'lethe_task_duration_seconds_count{kind="s3"}' in text
    assert raw not in text
    for path in ("/metrics", "/v1/erasure-requests", f"/v1/erasure-requests/{rid}",
                 f"/v1/erasure-requests/{rid}/certificate"):
        assert raw not in client.get(path, headers=auth("admin")).text, path


def test_admin_files_a_dataset_request_and_approves_it(client: TestClient, worker: None) -> None:
    """Dataset scope is admin-only, waits for approval, and an admin's approval (audited) runs it."""
    filed = client.post("/v1/erasure-requests", json={"dataset": "legacy-sessions"}, headers=auth("admin"))
    assert filed.status_code == 202, filed.text
    request_id = filed.json()["id"]
    assert filed.json()["scope"] == "dataset"
    status = wait_for(client, request_id, frozenset({"awaiting_approval"}))
    assert status["status"] == "awaiting_approval"
    assert client.post(f"/v1/erasure-requests/{request_id}/approve", headers=auth("operator")).status_code == 403
    approved = client.post(f"/v1/erasure-requests/{request_id}/approve", headers=auth("admin"))
    assert approved.status_code == 200, approved.text
    assert wait_for(client, request_id)["status"] == "completed"
    assert sorted(r["owner"] for r in MemoryStore.records("sessions")) == ["12", "12", "90210777", "90210777"]
    again = client.post(f"/v1/erasure-requests/{request_id}/approve", headers=auth("admin"))
    assert again.status_code == 409 and error_of(again)["code"]


def test_admin_holds_and_releases_a_subject(client: TestClient, worker: None) -> None:
    """A held subject's request waits on_hold and deletes nothing; only an admin holds; release resumes it."""
    body = {"subject": {"user_id": "12"}, "reason": "litigation hold, case 2026-17"}
    assert client.post("/v1/holds", json=body, headers=auth("operator")).status_code == 403
    hostile = {**body, "subject": {"user_id": "*"}}
    assert client.post("/v1/holds", json=hostile, headers=auth("admin")).status_code == 422
    assert client.post("/v1/holds", json=body, headers=auth("admin")).status_code == 201
    holds = client.get("/v1/holds", headers=auth("admin")).json()["items"]
    assert len(holds) == 1 and holds[0]["reason"] == body["reason"] and len(holds[0]["subject_hash"]) == 64
    rid = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester")).json()["id"]
    assert wait_for(client, rid, frozenset({"on_hold"}))["status"] == "on_hold"
    assert sorted(r["owner"] for r in MemoryStore.records("sessions")).count("12") == 2
    released = client.post("/v1/holds/release", json={"subject": {"user_id": "12"}}, headers=auth("admin"))
    assert released.status_code == 200, released.text
    assert wait_for(client, rid)["status"] == "completed"
    again = client.post("/v1/holds/release", json={"subject": {"user_id": "12"}}, headers=auth("admin"))
    assert again.status_code == 409
