"""Identity resolution end to end: a request carrying only an email erases what is keyed by the user id
(and, through a chain, the device id) it resolves to: photos on S3 (moto over HTTP), rows (kind: sql),
vectors (LanceDB) and sessions, through a real Celery worker on Redis; the application's database on
PostgreSQL and on SQLite. Nothing of anyone else is touched."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import create_engine, select, text

from orchestrator.identifiers import keyed_hash
from orchestrator.identities import ResolutionUnavailable
from orchestrator.ledger import InvalidInput
from orchestrator.ledger.models import Request
from orchestrator.service import Lethe
from orchestrator.testing import put_objects, versions_per_owner
from tests.fixtures.lethe import SUBJECT_KEY
from workers.targets.memory import MemoryStore
from workers.targets.selectors import dispose_engine

pytestmark = pytest.mark.integration

# app-users deletes the users row first; every target needing the resolved id comes after it, so a lookup
# at run time would miss: the values resolved at filing must carry them.
MAP = """
version: 1
identifiers: {{email: null, user_id: "[0-9]+", device_id: "[a-z0-9-]+"}}
identities:
  - name: device-by-user
    from: user_id
    to: device_id
    url: {url}
    sql: "SELECT d.id FROM {schema}devices d JOIN {schema}users u ON u.id = d.user_id WHERE u.id = :user_id"
  - name: user-by-email
    from: email
    to: user_id
    url: {url}
    sql: "SELECT id FROM {schema}users WHERE lower(email) = :email"
targets:
  - name: app-users
    kind: sql
    url: {url}
    table: {schema}users
    where: {{id: "{{user_id}}"}}
  - name: profile-photos
    kind: s3
    endpoint_url: {endpoint}
    bucket: {bucket}
    prefix: "users/{{user_id}}/"
    after: [app-users]
  - name: face-vectors
    kind: lancedb
    location: {lance}
    table: faces
    match: {{owner: "{{user_id}}"}}
    after: [app-users]
  - name: device-sessions
    kind: memory
    store: sessions
    match: {{device: "{{device_id}}"}}
    after: [app-users]
"""
# user id -> email; 55 and 56 share an address (two accounts of one person)
USERS = {12: "carl@example.org", 123: "carla@example.org", 1234: "carl@example.org.evil", 7: "x@example.org",
         55: "twins@example.org", 56: "twins@example.org"}
DEVICES = {12: ["d-12-a", "d-12-b"], 123: ["d-123"], 55: ["d-55"], 7: ["d-7"]}
DIM = 4


def app_rows(url: str, schema: str) -> set[int]:
    db = create_engine(url)
    with db.connect() as conn:
        ids = {row[0] for row in conn.execute(text(f"SELECT id FROM {schema}users"))}
    db.dispose()
    return ids


def vectors_per_owner(location: str) -> dict[str, int]:
    import lancedb

    owners = lancedb.connect(location).open_table("faces").to_arrow().column("owner").to_pylist()
    return {owner: owners.count(owner) for owner in set(owners)}


@pytest.fixture(params=["postgresql", "sqlite"])
def app_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The application's database (URL, schema prefix): users with emails, devices per user."""
    if request.param == "postgresql":
        url, schema = str(request.getfixturevalue("pg_database")), "app."
    else:
        url, schema = f"sqlite:///{tmp_path / 'app.db'}", ""
    db = create_engine(url)
    with db.begin() as conn:
        if schema:
            conn.execute(text("CREATE SCHEMA app"))
        conn.execute(text(f"CREATE TABLE {schema}users (id BIGINT PRIMARY KEY, email TEXT)"))
        conn.execute(text(f"CREATE TABLE {schema}devices (id TEXT PRIMARY KEY, user_id BIGINT)"))
        conn.execute(text(f"INSERT INTO {schema}users VALUES (:i, :e)"), [{"i": i, "e": e} for i, e in USERS.items()])
        conn.execute(text(f"INSERT INTO {schema}devices VALUES (:d, :u)"),
                     [{"d": d, "u": u} for u, ds in DEVICES.items() for d in ds])
    db.dispose()
    yield url, schema
    dispose_engine(url)


@pytest.fixture
def estate(app_db: tuple[str, str], s3_endpoint: str, bucket: str, tmp_path: Path) -> dict[str, str]:
    import lancedb

    put_objects(s3_endpoint, bucket, [f"users/{u}/p{i}.jpg" for u in USERS for i in range(2)])
    location = str(tmp_path / "lance")
    schema = pa.schema([("owner", pa.string()), ("vector", pa.list_(pa.float32(), DIM))])
    owners = [str(u) for u in USERS for _ in range(3)]
    vectors = np.random.default_rng(1).random((len(owners), DIM), dtype=np.float32)
    lancedb.connect(location).create_table("faces", pa.table(
        {"owner": owners, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)},
        schema=schema))
    MemoryStore.add("sessions", *({"device": d, "n": n} for ds in DEVICES.values() for d in ds for n in range(2)))
    url, prefix = app_db
    return {"url": url, "schema": prefix, "endpoint": s3_endpoint, "bucket": bucket, "lance": location}


@pytest.fixture
def running(estate: dict[str, str], redis_broker: str, write_map: Callable[[str], Path],
            make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    lethe = make_lethe(broker_url=redis_broker, data_map=write_map(MAP.format(**estate)))
    with lethe.embedded_worker(concurrency=2):
        yield lethe


def snapshot(estate: dict[str, str]) -> dict[str, Any]:
    return {"rows": app_rows(estate["url"], estate["schema"]),
            "photos": dict(versions_per_owner(estate["endpoint"], estate["bucket"])),
            "vectors": vectors_per_owner(estate["lance"]),
            "sessions": sorted(r["device"] for r in MemoryStore.records("sessions"))}


def without(before: dict[str, Any], users: set[int]) -> dict[str, Any]:
    """What must remain: everything but the given users' rows, photos, vectors and devices' sessions."""
    gone = {d for u in users for d in DEVICES.get(u, ())}
    return {"rows": {u for u in before["rows"] if u not in users},
            "photos": {o: n for o, n in before["photos"].items() if int(o) not in users},
            "vectors": {o: n for o, n in before["vectors"].items() if int(o) not in users},
            "sessions": [d for d in before["sessions"] if d not in gone]}


def deleted(status: dict[str, Any]) -> dict[str, int]:
    return {t["target"]: t["deleted"] for t in status["tasks"]}


def test_a_request_by_email_alone_erases_the_resolved_users_data_and_nobody_elses(
        running: Lethe, estate: dict[str, str]) -> None:
    """CARL@Example.org (any case) resolves to user 12 and, through the chain, its two devices; the users
    row goes first, and the photos, vectors and sessions keyed by the resolved ids still go after it."""
    before = snapshot(estate)
    request_id, _ = running.submit({"email": "CARL@Example.org"})
    status = running.wait(request_id, timeout=90)
    assert status["status"] == "completed", status
    assert snapshot(estate) == without(before, {12})
    assert deleted(status) == {"app-users": 1, "profile-photos": 2, "face-vectors": 3, "device-sessions": 4}
    key = bytes.fromhex(SUBJECT_KEY)
    expected = sorted([{"kind": "user_id", "hash": keyed_hash(key, "user_id", "12"), "via": "user-by-email"},
                       *({"kind": "device_id", "hash": keyed_hash(key, "device_id", d), "via": "device-by-user"}
                         for d in DEVICES[12])], key=lambda d: (d["kind"], d["hash"], d["via"]))
    assert status["derived"] == expected
    certificate = running.ledger.certificate(request_id)
    assert certificate["derived"] == expected
    shown = json.dumps([status, certificate, running.ledger.audit_trail(request_id)])
    for raw in ("carl@example.org", "d-12-a", "d-12-b", '"12"'):
        assert raw not in shown.lower()
    with running.ledger.sessions() as s:  # the resolved raw values are wiped with the request's own
        request = s.scalars(select(Request).where(Request.id == request_id)).one()
        assert request.sealed_subject is None and request.sealed_derived is None


def test_two_accounts_behind_one_email_are_both_purged(running: Lethe, estate: dict[str, str]) -> None:
    before = snapshot(estate)
    status = running.wait(running.submit({"email": "twins@example.org"})[0], timeout=90)
    assert status["status"] == "completed", status
    assert snapshot(estate) == without(before, {55, 56})
    assert deleted(status) == {"app-users": 2, "profile-photos": 4, "face-vectors": 6, "device-sessions": 2}
    assert [d["via"] for d in status["derived"] if d["kind"] == "user_id"] == ["user-by-email"] * 2


def test_no_user_resolved_skips_the_targets_with_the_reason(running: Lethe, estate: dict[str, str]) -> None:
    before = snapshot(estate)
    status = running.wait(running.submit({"email": "nobody@example.org"})[0], timeout=60)
    assert status["status"] == "completed", status
    assert {t["status"] for t in status["tasks"]} == {"skipped"}
    reasons = {t["target"]: t["reason"] for t in status["tasks"]}
    assert reasons["app-users"] == "not erased: no user_id resolved via user-by-email"
    assert reasons["device-sessions"] == "not erased: no device_id resolved via device-by-user"
    assert status["derived"] == []
    assert snapshot(estate) == before


@pytest.mark.parametrize("email", ["carl@example.org' OR '1'='1", "' OR ''='", "carl@example.org'--",
                                   "x'); DELETE FROM users; --", 'carl@example.org" OR ""="'])
def test_injection_in_the_email_resolves_nothing_and_deletes_nothing(
        running: Lethe, estate: dict[str, str], email: str) -> None:
    before = snapshot(estate)
    status = running.wait(running.submit({"email": email})[0], timeout=60)
    assert status["status"] == "completed" and status["derived"] == [], status
    assert snapshot(estate) == before


def test_a_lookup_database_that_does_not_answer_files_nothing(
        estate: dict[str, str], redis_broker: str, write_map: Callable[[str], Path],
        make_lethe: Callable[..., Lethe]) -> None:
    """Not a half-resolved request: the filing fails (exit 4 at the CLI, 503 at the API), nothing recorded."""
    closed = "postgresql://nobody@127.0.0.1:1/app" if estate["schema"] else "sqlite:////nonexistent/dir/app.db"
    lethe = make_lethe(broker_url=redis_broker, data_map=write_map(MAP.format(**{**estate, "url": closed})))
    with pytest.raises(ResolutionUnavailable, match="user-by-email") as caught:
        lethe.submit({"email": "carl@example.org"})
    assert "carl" not in str(caught.value) and "127.0.0.1" not in str(caught.value)
    assert lethe.ledger.list_requests()["items"] == []


def test_a_hold_on_the_resolved_user_id_holds_a_request_by_email(running: Lethe, estate: dict[str, str]) -> None:
    """The hold names user 12; the request names only the email: it waits on_hold and nothing is deleted."""
    before = snapshot(estate)
    running.add_hold({"user_id": "12"}, reason="litigation")
    status = running.wait(running.submit({"email": "carl@example.org"})[0], timeout=60)
    assert status["status"] == "on_hold", status
    assert snapshot(estate) == before


def test_an_extension_reason_naming_a_resolved_identifier_is_refused(
        estate: dict[str, str], write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe]) -> None:
    """The audit trail is kept for good: a resolved device id is the subject's identifier like the email."""
    lethe = make_lethe(data_map=write_map(MAP.format(**estate)))  # no worker: the request stays planned
    request_id, _ = lethe.submit({"email": "carl@example.org"})
    with pytest.raises(InvalidInput, match="contains the subject's identifier"):
        lethe.ledger.extend_deadline(request_id, "customer D-12-B asked for more time")
    assert lethe.ledger.extend_deadline(request_id, "complex request across several systems")


@pytest.mark.parametrize("app_db", ["sqlite"], indirect=True)
def test_sliced_purge_of_two_resolved_accounts_counts_every_slice_once(
        estate: dict[str, str], redis_broker: str, write_map: Callable[[str], Path],
        make_lethe: Callable[..., Lethe]) -> None:
    """With a zero time slice the photos task is handed back every 1,000 versions, across both accounts:
    the record counts each version once and both accounts' photos are gone, nobody else's."""
    put_objects(estate["endpoint"], estate["bucket"], [f"users/{u}/bulk-{i:04d}.jpg" for u in (55, 56)
                                                       for i in range(600)])
    lethe = make_lethe(broker_url=redis_broker, data_map=write_map(MAP.format(**estate)))
    lethe.settings.task_slice_seconds = 0
    before = snapshot(estate)
    with lethe.embedded_worker():
        request_id, _ = lethe.submit({"email": "twins@example.org"})
        status = lethe.wait(request_id, timeout=180)
    assert status["status"] == "completed", status
    assert deleted(status)["profile-photos"] == 2 * 602
    assert snapshot(estate) == without(before, {55, 56})
    assert [e for e in lethe.ledger.audit_trail(request_id) if e["action"] == "task.continued"]


def test_the_api_and_the_dashboard_show_the_derived_hashes_with_their_resolution(
        estate: dict[str, str], write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe],
        tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from orchestrator.api import create_app
    from tests.orchestrator.api.conftest import NAMES, TOKENS, auth
    from tests.orchestrator.api.test_dashboard import sign_in

    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{TOKENS[r]} {r} {NAMES[r]}\n" for r in TOKENS))
    lethe = make_lethe(data_map=write_map(MAP.format(**estate)), api_tokens=tokens)  # no worker: it stays planned
    with TestClient(create_app(lethe)) as client:
        filed = client.post("/v1/erasure-requests", json={"subject": {"email": "carl@example.org"}},
                            headers=auth("admin"))
        assert filed.status_code == 202, filed.text
        body = client.get(f"/v1/erasure-requests/{filed.json()['id']}", headers=auth("operator")).json()
        user = next(d for d in body["derived"] if d["kind"] == "user_id")
        assert user["via"] == "user-by-email" and len(user["hash"]) == 64
        sign_in(client, "operator")
        page = client.get(f"/requests/{body['id']}").text
        assert f"user_id: {user['hash'][:16]}… <span class=\"muted\">via user-by-email</span>" in page
        assert "carl@" not in page and "d-12-a" not in page


@pytest.mark.parametrize("app_db", ["sqlite"], indirect=True)
def test_an_unreachable_lookup_is_exit_4_at_the_cli_and_503_at_the_api(
        estate: dict[str, str], redis_broker: str, write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe],
        signing_key_file: Path, tmp_path: Path) -> None:
    """One line naming the resolution, no traceback, no value; the API says 503; nothing is filed."""
    import os
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from orchestrator.api import create_app
    from tests.orchestrator.api.conftest import NAMES, TOKENS, auth

    path = write_map(MAP.format(**{**estate, "url": "postgresql://nobody@127.0.0.1:1/app"}))
    ledger = f"sqlite:///{tmp_path / 'cli-ledger.db'}"
    env = {**os.environ, "LETHE_BROKER_URL": redis_broker, "LETHE_DATABASE_URL": ledger, "LETHE_DATA_MAP": str(path),
           "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(signing_key_file)}
    done = subprocess.run([str(Path(sys.executable).with_name("lethe")), "submit", "--subject",
                           "email=carl@example.org"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done
    assert done.stderr.count("\n") == 1 and "user-by-email" in done.stderr and "Traceback" not in done.stderr
    assert "carl" not in done.stderr and "nobody" not in done.stderr
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{TOKENS[r]} {r} {NAMES[r]}\n" for r in TOKENS))
    lethe = make_lethe(database_url=ledger, data_map=path, api_tokens=tokens)
    with TestClient(create_app(lethe)) as client:
        answer = client.post("/v1/erasure-requests", json={"subject": {"email": "carl@example.org"}},
                             headers=auth("admin"))
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "resolution_unavailable", answer.text
        assert "carl" not in answer.text
    assert lethe.ledger.list_requests()["items"] == []


@pytest.mark.parametrize("app_db", ["sqlite"], indirect=True)
def test_an_event_by_email_is_resolved_and_one_whose_lookup_fails_is_requeued(
        estate: dict[str, str], redis_broker: str, write_map: Callable[[str], Path],
        make_lethe: Callable[..., Lethe]) -> None:
    """Through the intake's batch: the email's user is erased; with the lookup database gone, the event is
    given back to the queue (never dead-lettered, never filed half-resolved)."""
    import time

    from kombu import Connection

    from orchestrator.events import DEAD_QUEUE, declare, intake_queue, publish_erasure_request
    from tests.fixtures.events import KEY, request_ids, running_intake, wait_for

    with Connection(redis_broker) as conn:
        declare(conn)
    before = snapshot(estate)
    lethe = make_lethe(broker_url=redis_broker, data_map=write_map(MAP.format(**estate)), event_key=KEY.decode())
    publish_erasure_request(redis_broker, {"email": "carl@example.org"}, source="account-service", key=KEY)
    with lethe.embedded_worker(), running_intake(lethe, redis_broker, batch_window=0.2):
        request_id = wait_for(lambda: request_ids(lethe))[0]
        assert lethe.wait(request_id, timeout=90)["status"] == "completed"
    assert snapshot(estate) == without(before, {12})

    down = make_lethe(broker_url=redis_broker, event_key=KEY.decode(),
                      data_map=write_map(MAP.format(**{**estate, "url": "postgresql://nobody@127.0.0.1:1/app"})))
    publish_erasure_request(redis_broker, {"email": "carla@example.org"}, source="account-service", key=KEY)
    with running_intake(down, redis_broker, batch_window=0.2):
        time.sleep(3)
    assert len(request_ids(down)) == 1  # only the first
    with Connection(redis_broker) as conn:
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 1
        assert DEAD_QUEUE(conn.default_channel).queue_declare().message_count == 0


EMAIL_BY_USER = """
version: 1
identifiers: {{user_id: null, email: null}}
identities:
  - name: email-by-user
    from: user_id
    to: email
    url: {url}
    sql: "SELECT email FROM {schema}users WHERE id = :user_id"
targets:
  - name: mailing-list
    kind: memory
    store: mailing
    match: {{email: "{{email}}"}}
"""


@pytest.mark.parametrize("app_db", ["postgresql"], indirect=True)
def test_a_value_the_lookup_database_refuses_is_a_bad_subject_not_an_outage(
        app_db: tuple[str, str], redis_broker: str, write_map: Callable[[str], Path],
        make_lethe: Callable[..., Lethe]) -> None:
    """``abc`` bound to an integer id is a DataError on PostgreSQL: that subject is refused (422 at the
    API), its event dead-lettered, and the good event behind it filed; nothing requeued for ever."""
    from fastapi.testclient import TestClient
    from kombu import Connection

    from orchestrator.api import create_app
    from orchestrator.deadletters import list_dead_letters
    from orchestrator.events import DEAD_QUEUE, declare, intake_queue, publish_erasure_request
    from orchestrator.identities import ResolutionRefused
    from tests.fixtures.events import KEY, request_ids, running_intake, wait_for
    from tests.orchestrator.api.conftest import NAMES, TOKENS, auth

    url, schema = app_db
    path = write_map(EMAIL_BY_USER.format(url=url, schema=schema))
    lethe = make_lethe(broker_url=redis_broker, data_map=path, event_key=KEY.decode())
    with pytest.raises(ResolutionRefused, match=r"email-by-user.*refused by its database") as caught:
        lethe.load_map().resolve(lethe.load_map().parse_subject({"user_id": "abc"}))
    assert "abc" not in str(caught.value)
    with Connection(redis_broker) as conn:
        declare(conn)
    publish_erasure_request(redis_broker, {"user_id": "abc"}, source="account-service", key=KEY)
    publish_erasure_request(redis_broker, {"user_id": "12"}, source="account-service", key=KEY)
    with running_intake(lethe, redis_broker, batch_window=0.5):
        assert len(wait_for(lambda: request_ids(lethe))) == 1
        with Connection(redis_broker) as conn:
            assert wait_for(lambda: DEAD_QUEUE(conn.default_channel).queue_declare().message_count == 1)
    with Connection(redis_broker) as conn:
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 0
        assert [d.reason for d in list_dead_letters(conn)] == ["bad-subject"]
    tokens = path.parent / "tokens"
    tokens.write_text("".join(f"{TOKENS[r]} {r} {NAMES[r]}\n" for r in TOKENS))
    api = make_lethe(broker_url=redis_broker, data_map=path, api_tokens=tokens)
    with TestClient(create_app(api)) as client:
        answer = client.post("/v1/erasure-requests", json={"subject": {"user_id": "abc"}}, headers=auth("admin"))
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_identifier", answer.text
        assert "abc" not in answer.text
