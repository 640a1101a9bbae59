"""The dashboard's sign-in, session cookie, CSRF checks, roles and pages, without a browser."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from orchestrator.api import sessions
from orchestrator.ledger.models import Request
from orchestrator.service import Lethe
from tests.orchestrator.api.conftest import TOKENS, auth, missing_bucket, wait_for

pytestmark = pytest.mark.integration


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def sign_in(client: TestClient, role: str) -> None:
    form = client.get("/login")
    response = client.post("/login", data={"token": TOKENS[role], "csrf": csrf_of(form.text), "next": "/"},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/", response.text


def test_pages_need_a_session(client: TestClient) -> None:
    """Every page redirects to the sign-in form, keeping where the user was going (same site only)."""
    for path in ("/", "/overview", "/requests/0b0e7a57-0000-4000-8000-000000000000"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=%2F"), path
    form = client.get("/login?next=//evil.example/x")
    assert 'name="next" value="/"' in form.text


def test_sign_in_sets_a_safe_cookie_without_the_token(client: TestClient) -> None:
    """Signing in gives an HttpOnly, SameSite=Strict signed cookie that names the user but holds no token."""
    form = client.get("/login")
    assert "content-security-policy" in form.headers and "script-src 'nonce-" in form.headers[
        "content-security-policy"]
    response = client.post("/login", data={"token": TOKENS["operator"], "csrf": csrf_of(form.text)},
                           follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    value = client.cookies[sessions.COOKIE]
    assert all(token not in value for token in TOKENS.values())
    page = client.get("/")
    assert page.status_code == 200 and "oscar" in page.text and "(operator)" in page.text


def test_sign_in_refuses_bad_tokens_and_missing_csrf(client: TestClient) -> None:
    """An unknown token is 401, a form without its CSRF token is 403; neither signs in."""
    form = client.get("/login")
    bad = client.post("/login", data={"token": "wrong-token-0000000000", "csrf": csrf_of(form.text)})
    assert bad.status_code == 401 and "Unknown token" in bad.text
    no_csrf = client.post("/login", data={"token": TOKENS["admin"], "csrf": "forged"})
    assert no_csrf.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 303


def test_forged_or_tampered_cookies_are_ignored(client: TestClient) -> None:
    """A cookie signed with another key, or edited, is no session."""
    forged = sessions.encode(sessions.Session.new(sessions.Principal("mallory", sessions.Role.ADMIN)), b"k" * 32)
    client.cookies.set(sessions.COOKIE, forged)
    assert client.get("/", follow_redirects=False).status_code == 303
    client.cookies.clear()
    sign_in(client, "requester")
    payload, mac = client.cookies[sessions.COOKIE].split(".")
    client.cookies.clear()
    client.cookies.set(sessions.COOKIE, payload[:-2] + "xx." + mac)
    assert client.get("/", follow_redirects=False).status_code == 303


def test_retry_needs_the_role_and_the_csrf_token(client: TestClient, lethe: Lethe, worker: None,
                                                 point_map, s3_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    """A requester sees no Retry button and is refused; an operator's POST without CSRF is refused, with it works."""
    from orchestrator.testing import make_bucket

    absent = missing_bucket()
    point_map(absent)
    rid = client.post("/v1/erasure-requests", json={"subject": {"user_id": "12"}},
                      headers=auth("requester")).json()["id"]
    assert wait_for(client, rid)["status"] == "failed"
    sign_in(client, "requester")
    page = client.get(f"/requests/{rid}")
    assert "NoSuchBucket" in page.text and 'id="retry"' not in page.text
    refused = client.post(f"/requests/{rid}/retry", data={"csrf": csrf_of(page.text)})
    assert refused.status_code == 403
    sign_in(client, "operator")
    page = client.get(f"/requests/{rid}")
    assert 'id="retry"' in page.text
    assert client.post(f"/requests/{rid}/retry", data={"csrf": "nope"}).status_code == 403
    make_bucket(s3_endpoint, absent)
    done = client.post(f"/requests/{rid}/retry", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/requests/{rid}?done=retried"
    assert wait_for(client, rid)["status"] == "completed"
    trail = lethe.ledger.audit_trail(rid)
    assert any(e["action"] == "request.retried" and e["actor"] == "dashboard:oscar(operator)" for e in trail)
    page = client.get(f"/requests/{rid}")
    assert 'id="certificate"' in page.text
    cert = client.get(f"/requests/{rid}/certificate.json")
    assert cert.status_code == 200 and cert.json()["request_id"] == rid


def test_pages_show_no_raw_identifier(client: TestClient, worker: None) -> None:
    """Requests table, request page, overview and certificate of an erased subject never show its identifier."""
    raw = "90210777"
    rid = client.post("/v1/erasure-requests", json={"subject": {"user_id": raw}}, headers=auth("admin")).json()["id"]
    assert wait_for(client, rid)["status"] == "completed"
    sign_in(client, "admin")
    pages = {path: client.get(path) for path in ("/", f"/?q={rid[:8]}", "/?status=completed", f"/requests/{rid}",
                                                  "/overview", f"/requests/{rid}/certificate.json")}
    for path, response in pages.items():
        assert response.status_code == 200, path
        assert raw not in response.text, path
    assert rid in pages[f"/?q={rid[:8]}"].text and rid in pages["/"].text
    assert "Items erased per hour" in pages["/overview"].text and "<svg" in pages["/overview"].text
    assert 'id="queues"' in pages["/overview"].text  # the broker is Redis: queue depths are shown
    assert "request.completed" in pages[f"/requests/{rid}"].text
    assert client.get("/requests/0b0e7a57-0000-4000-8000-000000000000").status_code == 404


def test_overdue_and_due_soon_requests_stand_out(client: TestClient, lethe: Lethe) -> None:
    """Requests past due or due within 3 days are highlighted, counted, searchable and in /metrics."""
    ids = [client.post("/v1/erasure-requests", json={"subject": {"user_id": str(u)}},
                       headers=auth("requester")).json()["id"] for u in (1, 2, 3)]
    late, soon, fine = ids
    at = datetime.now(UTC)
    with lethe.ledger.sessions.begin() as s:
        s.execute(update(Request).where(Request.id == late).values(due_at=at - timedelta(days=2, hours=1)))
        s.execute(update(Request).where(Request.id == soon).values(due_at=at + timedelta(days=2)))
    sign_in(client, "operator")
    html = client.get("/").text
    rows = {rid: re.search(rf'<tr class="([^"]*)" data-id="{rid}">(.*?)</tr>', html, re.S) for rid in ids}
    assert all(rows.values()), html
    assert rows[late].group(1) == "overdue" and "overdue by 2d 1h" in rows[late].group(2)  # type: ignore[union-attr]
    assert rows[soon].group(1) == "due-soon" and "1d 23h left" in rows[soon].group(2)  # type: ignore[union-attr]
    assert rows[fine].group(1) == ""  # type: ignore[union-attr]
    searched = client.get("/", params={"q": late[:8]}).text
    assert late in searched and soon not in searched and fine not in searched
    assert fine not in client.get("/", params={"status": "completed"}).text
    metrics = client.get("/metrics").text
    assert "lethe_requests_overdue 1.0" in metrics and "lethe_requests_due_soon 1.0" in metrics


def test_only_an_admin_sees_and_uses_the_approve_button(client: TestClient, lethe: Lethe, worker: None) -> None:
    """A dataset request waits; an operator sees no Approve button; an admin's approval (audited) runs it."""
    rid = client.post("/v1/erasure-requests", json={"dataset": "legacy-sessions"}, headers=auth("admin")).json()["id"]
    assert wait_for(client, rid, frozenset({"awaiting_approval"}))["status"] == "awaiting_approval"
    sign_in(client, "operator")
    page = client.get(f"/requests/{rid}")
    assert 'id="approve"' not in page.text and "Waiting for an admin" in page.text
    assert client.post(f"/requests/{rid}/approve", data={"csrf": csrf_of(page.text)}).status_code == 403
    sign_in(client, "admin")
    page = client.get(f"/requests/{rid}")
    assert 'id="approve"' in page.text
    done = client.post(f"/requests/{rid}/approve", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/requests/{rid}?done=approved"
    assert wait_for(client, rid)["status"] == "completed"
    assert any(e["action"] == "request.approved" and e["actor"] == "dashboard:ada(admin)"
               for e in lethe.ledger.audit_trail(rid))
