"""Requester scope and idempotency namespaces (SPEC "HTTP API"), over PostgreSQL, Redis and moto's S3 server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.events import ERASURE_REQUESTED, check, event_actor, idempotency_key, make_event
from orchestrator.ledger.models import Request
from orchestrator.service import Lethe
from tests.orchestrator.api.conftest import auth, wait_for

pytestmark = pytest.mark.integration
SUBJECT = {"subject": {"user_id": "12"}}
BOB = "req-bob-5d1e9c7a3f2b8e6d"  # a second requester
EVENT_KEY = b"event-key-for-the-scope-tests-0123456789"


@pytest.fixture
def bob(tokens_file: Path) -> dict[str, str]:
    with tokens_file.open("a") as f:
        f.write(f"{BOB} requester bob\n")
    return {"Authorization": f"Bearer {BOB}"}


def test_an_api_key_cannot_take_an_events_place(client: TestClient, lethe: Lethe) -> None:
    """A requester filing under the key an event dedupes on does not stop the event from filing."""
    body = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "123"}}, source="account-service", key=EVENT_KEY)
    event = check(json.dumps(body).encode(), EVENT_KEY)
    forged = client.post("/v1/erasure-requests", json=SUBJECT,
                         headers={**auth("requester"), "Idempotency-Key": idempotency_key(event)})
    assert forged.status_code == 202, forged.text
    # What the intake does with an authenticated erasure event:
    filed, created = lethe.submit({"user_id": "123"}, actor=event_actor(event), idempotency_key=idempotency_key(event))
    assert created and filed != forged.json()["id"]
    again, created_again = lethe.submit({"user_id": "123"}, actor=event_actor(event),
                                        idempotency_key=idempotency_key(event))
    assert (again, created_again) == (filed, False)  # a redelivered event still files once
    assert lethe.ledger.status(filed)["subject_hashes"] != lethe.ledger.status(forged.json()["id"])["subject_hashes"]


def test_keys_are_scoped_to_the_token_name(client: TestClient, lethe: Lethe, bob: dict[str, str]) -> None:
    """The same token replaying gets 200 and the same request; another token's same key is its own request."""
    key = {"Idempotency-Key": "ticket-4711"}
    first = client.post("/v1/erasure-requests", json=SUBJECT, headers={**auth("requester"), **key})
    replay = client.post("/v1/erasure-requests", json=SUBJECT, headers={**auth("requester"), **key})
    other = client.post("/v1/erasure-requests", json=SUBJECT, headers={**bob, **key})
    admin = client.post("/v1/erasure-requests", json={"subject": {"user_id": "123"}}, headers={**auth("admin"), **key})
    assert (first.status_code, replay.status_code, other.status_code, admin.status_code) == (202, 200, 202, 202)
    assert replay.json()["id"] == first.json()["id"]
    assert len({first.json()["id"], other.json()["id"], admin.json()["id"]}) == 3
    with lethe.ledger.sessions() as s:
        stored = {r.id: (r.idempotency_key, r.requested_by) for r in s.query(Request)}
    assert stored[first.json()["id"]] == ("api:alice:ticket-4711", "alice")
    assert stored[other.json()["id"]] == ("api:bob:ticket-4711", "bob")
    assert stored[admin.json()["id"]] == ("api:ada:ticket-4711", "ada")


def test_a_requester_reads_only_its_own_requests(client: TestClient, bob: dict[str, str], worker: None) -> None:
    """Another requester's request is 404 (as an unknown id is) for get and certificate, and not listed;
    operators and admins read every request."""
    mine = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester")).json()["id"]
    theirs = client.post("/v1/erasure-requests", json={"subject": {"user_id": "123"}}, headers=bob).json()["id"]
    assert wait_for(client, mine)["status"] == wait_for(client, theirs)["status"] == "completed"
    unknown = str(uuid.uuid4())
    for path in ("", "/certificate"):
        hidden = client.get(f"/v1/erasure-requests/{theirs}{path}", headers=auth("requester"))
        absent = client.get(f"/v1/erasure-requests/{unknown}{path}", headers=auth("requester"))
        assert hidden.status_code == absent.status_code == 404, hidden.text
        assert hidden.json()["error"]["message"].replace(theirs, "ID") == \
            absent.json()["error"]["message"].replace(unknown, "ID")
        assert client.get(f"/v1/erasure-requests/{mine}{path}", headers=auth("requester")).status_code == 200
        for role in ("operator", "admin"):
            assert client.get(f"/v1/erasure-requests/{theirs}{path}", headers=auth(role)).status_code == 200
    listed = client.get("/v1/erasure-requests", headers=auth("requester")).json()["items"]
    assert [s["id"] for s in listed] == [mine] and listed[0]["requested_by"] == "alice"
    assert [s["id"] for s in client.get("/v1/erasure-requests", headers=bob).json()["items"]] == [theirs]
    for role in ("operator", "admin"):
        everyone = client.get("/v1/erasure-requests", headers=auth(role)).json()["items"]
        assert {s["id"] for s in everyone} == {mine, theirs}


def test_a_requester_never_sees_a_holds_reason(client: TestClient, worker: None) -> None:
    """A requester filing for a held subject sees on_hold and held tasks, not the reason; operators do."""
    reason = "litigation hold, case 2026-17"
    assert client.post("/v1/holds", json={**SUBJECT, "reason": reason}, headers=auth("admin")).status_code == 201
    filed = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester"))
    rid = filed.json()["id"]
    assert wait_for(client, rid, frozenset({"on_hold"}))["status"] == "on_hold"
    for response in (filed, client.get(f"/v1/erasure-requests/{rid}", headers=auth("requester")),
                     client.get("/v1/erasure-requests", headers=auth("requester"))):
        assert "litigation" not in response.text and "2026-17" not in response.text
    seen = client.get(f"/v1/erasure-requests/{rid}", headers=auth("requester")).json()
    assert {t["status"] for t in seen["tasks"]} == {"held"} and seen["status"] == "on_hold"
    assert all(t["reason"].startswith("legal hold") for t in seen["tasks"])
    for role in ("operator", "admin"):
        assert reason in client.get(f"/v1/erasure-requests/{rid}", headers=auth(role)).text


def test_migration_0007_namespaces_old_keys(ledger_url: str) -> None:
    """A ledger from before 0007: API keys become api:<name>:<key> (an API row that took an event's key lets
    it go), CLI keys cli:<key>, event keys stay; API requests get requested_by."""
    from alembic import command
    from sqlalchemy import text

    from orchestrator.ledger import db

    engine = db.make_engine(ledger_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        command.upgrade(db._alembic_config(conn), "0006")
        conn.commit()
    rows = [("a", "api:alice(requester)", "ticket-1"), ("b", "api:alice(requester)", "event:" + "f" * 64),
            ("c", "cli", "nightly"), ("d", "event:account-service", "event:" + "e" * 64),
            ("e", "api:ada(admin)", None), ("f", "cli", None)]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO data_maps (digest, text, created_at) VALUES ('m', '', :at)"),
                     {"at": "2026-12-01T00:00:00+00:00"})
        for rid, actor, key in rows:
            conn.execute(text(
                "INSERT INTO requests (id, scope, status, dry_run, regime, received_at, due_at, data_map_digest, "
                "subject_hashes, idempotency_key, actor) VALUES (:id, 'subject', 'planned', false, 'gdpr', :at, "
                ":at, 'm', '{}', :key, :actor)"), {"id": rid, "key": key, "actor": actor,
                                                     "at": "2026-12-01T00:00:00+00:00"})
    db.migrate(engine)
    with engine.connect() as conn:
        after = {rid: (key, by) for rid, key, by in conn.execute(
            text("SELECT id, idempotency_key, requested_by FROM requests"))}
    assert after == {"a": ("api:alice:ticket-1", "alice"), "b": ("api:alice:event:" + "f" * 64, "alice"),
                     "c": ("cli:nightly", None), "d": ("event:" + "e" * 64, None), "e": (None, "ada"),
                     "f": (None, None)}
    engine.dispose()


def test_the_cli_key_has_its_own_namespace(client: TestClient, lethe: Lethe) -> None:
    """`lethe submit --idempotency-key K` twice files once, stored as cli:K; an API caller's K is its own."""
    import os
    import subprocess
    import sys

    settings = lethe.settings
    env = {**os.environ, "LETHE_DATABASE_URL": settings.database_url, "LETHE_BROKER_URL": settings.broker_url or "",
           "LETHE_DATA_MAP": str(settings.data_map), "LETHE_SIGNING_KEY": str(settings.signing_key),
           "LETHE_SUBJECT_KEY": settings.subject_key.get_secret_value()}  # type: ignore[union-attr]
    command = [str(Path(sys.executable).with_name("lethe")), "submit", "--subject", "user_id=12",
               "--idempotency-key", "ticket-9"]
    runs = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    ids = [r.stdout.strip() for r in runs]
    assert ids[0] == ids[1] and len(ids[0]) == 36
    api = client.post("/v1/erasure-requests", json=SUBJECT,
                      headers={**auth("requester"), "Idempotency-Key": "ticket-9"})
    assert api.status_code == 202 and api.json()["id"] != ids[0]
    with lethe.ledger.sessions() as s:
        assert s.get(Request, ids[0]).idempotency_key == "cli:ticket-9"  # type: ignore[union-attr]


def test_the_request_an_event_made_is_found_by_source_and_id(client: TestClient, lethe: Lethe) -> None:
    """GET /v1/erasure-requests/by-event finds an event's request for operators and admins; a requester, an
    unknown event and a dead-lettered one get the same 404."""
    body = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "123"}}, source="account-service", key=EVENT_KEY)
    event = check(json.dumps(body).encode(), EVENT_KEY)
    filed, _ = lethe.submit({"user_id": "123"}, actor=event_actor(event), idempotency_key=idempotency_key(event))
    params = {"source": event.source, "id": event.id}
    for role in ("operator", "admin"):
        found = client.get("/v1/erasure-requests/by-event", params=params, headers=auth(role))
        assert found.status_code == 200 and found.json()["id"] == filed, found.text
    hidden = client.get("/v1/erasure-requests/by-event", params=params, headers=auth("requester"))
    unknown = client.get("/v1/erasure-requests/by-event", params={**params, "id": "nope"}, headers=auth("operator"))
    assert hidden.status_code == unknown.status_code == 404 and hidden.json() == unknown.json()
    assert filed not in hidden.text
    assert client.get("/v1/erasure-requests/by-event", params={"source": "x"}, headers=auth("admin")).status_code == 422
