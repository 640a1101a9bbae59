"""What an operator on call relies on: sign-out that ends the session, /metrics that does not rescan the ledger
per scrape, worker liveness and queue depths, unfinished requests' progress, /docs without a CDN, and the
dashboard's requester scope. PostgreSQL, Redis (RabbitMQ for the passive declare) and moto's S3 server."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from orchestrator.api import sessions
from orchestrator.api.broker import BrokerView, queue_names
from orchestrator.ledger.models import AuditEntry, Request, Task
from orchestrator.service import Lethe
from tests.fixtures.services import AMQP_URL
from tests.orchestrator.api.conftest import auth, wait_for
from tests.orchestrator.api.test_dashboard import csrf_of, sign_in

pytestmark = pytest.mark.integration
SUBJECT = {"subject": {"user_id": "12"}}


def statements(lethe: Lethe) -> list[str]:
    """Every SQL statement the ledger's engine runs from now on."""
    seen: list[str] = []
    event.listen(lethe.ledger.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_sign_out_revokes_the_session(client: TestClient) -> None:
    """After sign-out, a copy of the session cookie (say, stolen) no longer opens any page."""
    sign_in(client, "operator")
    stolen = client.cookies[sessions.COOKIE]
    page = client.get("/")
    assert page.status_code == 200
    out = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    client.cookies.clear()
    client.cookies.set(sessions.COOKIE, stolen)
    for path in ("/", "/overview"):
        assert client.get(path, follow_redirects=False).status_code == 303, path
    sign_in(client, "operator")  # a new sign-in is a new session, unaffected
    assert client.get("/", follow_redirects=False).status_code == 200


def test_metrics_read_the_ledger_at_most_every_few_seconds(client: TestClient, lethe: Lethe) -> None:
    """Back-to-back scrapes share one reading of the ledger; a later one reads it again and sees new requests."""
    client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("admin"))
    seen = statements(lethe)
    first = client.get("/metrics").text
    reads = len(seen)
    assert reads > 0 and 'lethe_requests{status="planned"} 1.0' in first
    client.post("/v1/erasure-requests", json={"subject": {"user_id": "123"}}, headers=auth("admin"))
    seen.clear()
    for _ in range(5):
        assert client.get("/metrics").text == first
    assert seen == []
    client.app.state.snapshots.seconds = 0  # type: ignore[attr-defined]
    assert 'lethe_requests{status="planned"} 2.0' in client.get("/metrics").text


def test_metrics_and_overview_show_workers_and_queue_depths(client: TestClient, lethe: Lethe,
                                                            worker_factory: Callable[[], object]) -> None:
    """With no worker, a filed request's message waits in purge.s3 and no worker is alive; once one runs it is
    counted on every queue it consumes and the queue drains."""
    rid = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("admin")).json()["id"]
    text = client.get("/metrics").text
    assert 'lethe_queue_depth{queue="purge.s3"} 1.0' in text and "lethe_broker_up 1.0" in text
    assert 'lethe_workers{queue="purge.s3"} 0.0' in text
    with worker_factory():  # type: ignore[attr-defined]
        assert wait_for(client, rid)["status"] == "completed"
        broker: BrokerView = client.app.state.broker  # type: ignore[attr-defined]
        broker.probe_seconds = 0
        text = client.get("/metrics").text
        assert 'lethe_workers{queue="purge.s3"} 1.0' in text and 'lethe_queue_depth{queue="purge.s3"} 0.0' in text
        sign_in(client, "operator")
        html = client.get("/overview").text
        row = re.search(r'<tr data-queue="purge.s3">(.*?)</tr>', html, re.S)
        assert row and re.search(r'class="num workers">1<', row.group(1)), html
        assert 'id="dead-letters"' in html


def test_rabbitmq_depths_come_from_a_passive_declare(lethe: Lethe, make_lethe: Callable[..., Lethe]) -> None:
    """On RabbitMQ every declared queue reports its message count (workers: none consume here)."""
    from workers.app import declare_queues

    rabbit = make_lethe(**{**lethe.settings.model_dump(), "broker_url": AMQP_URL})
    declare_queues(rabbit.app)
    state = BrokerView(rabbit).state()
    assert state is not None and state.reachable
    assert set(state.depths) == set(queue_names()) and all(isinstance(n, int) for n in state.depths.values())
    down = make_lethe(**{**lethe.settings.model_dump(), "broker_url": "amqp://guest:guest@127.0.0.1:1//"})
    unreachable = BrokerView(down).state()
    assert unreachable is not None and not unreachable.reachable


def test_unfinished_requests_show_progress_and_next_resend(client: TestClient, lethe: Lethe) -> None:
    """A request nobody works on shows when it last progressed and when reconcile re-sends it; once quiet
    longer than a lease it is counted stalled and its re-send is due."""
    rid = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("admin")).json()["id"]
    sign_in(client, "operator")
    html = client.get("/").text
    row = re.search(rf'<tr class="[^"]*" data-id="{rid}">(.*?)</tr>', html, re.S)
    assert row, html
    assert re.search(r'class="progress" [^>]*>\d+s ago<', row.group(1)), row.group(1)
    assert re.search(r'class="resend" [^>]*>in (\d+s|1m)<', row.group(1)), row.group(1)  # lease: 60 s here
    past = datetime.now(UTC) - timedelta(hours=2)
    with lethe.ledger.sessions.begin() as s:
        s.execute(update(Request).where(Request.id == rid).values(received_at=past))
        s.execute(update(AuditEntry).where(AuditEntry.request_id == rid).values(at=past))
        s.execute(update(Task).where(Task.request_id == rid, Task.lease_expires_at.is_not(None))
                  .values(lease_expires_at=past + timedelta(seconds=60)))
    html = client.get("/").text
    row = re.search(rf'<tr class="[^"]*" data-id="{rid}">(.*?)</tr>', html, re.S)
    assert row and 'class="progress stalled"' in row.group(1) and ">2h 0m ago<" in row.group(1), row
    assert '>due now<' in row.group(1)
    assert re.search(r'id="stalled-count"[^>]*><span class="muted">stalled</span><b>1</b>', html)
    page = client.get(f"/requests/{rid}").text
    assert 'id="last-progress" class="stalled"' in page and "due now" in page


def test_a_requester_sees_only_its_own_requests_in_the_dashboard(client: TestClient, worker: None) -> None:
    """Signed in as a requester: its own requests only (list, search, page, certificate), no hold reason."""
    reason = "litigation hold, case 2026-17"
    client.post("/v1/holds", json={**SUBJECT, "reason": reason}, headers=auth("admin"))
    mine = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("requester")).json()["id"]
    theirs = client.post("/v1/erasure-requests", json={"subject": {"user_id": "123"}},
                         headers=auth("admin")).json()["id"]
    assert wait_for(client, mine, frozenset({"on_hold"}))["status"] == "on_hold"
    assert wait_for(client, theirs)["status"] == "completed"
    sign_in(client, "requester")
    listing = client.get("/").text
    assert mine in listing and theirs not in listing
    assert theirs not in client.get("/", params={"q": theirs[:8]}).text
    for path in (f"/requests/{theirs}", f"/requests/{theirs}/certificate.json"):
        assert client.get(path).status_code == 404, path
    own = client.get(f"/requests/{mine}").text
    assert "legal hold" in own and reason not in own and "2026-17" not in own
    sign_in(client, "operator")
    assert reason in client.get(f"/requests/{mine}").text and theirs in client.get("/").text


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_are_served_from_local_assets(client: TestClient) -> None:
    """/docs is Swagger UI whose every script, style and icon is served by the API itself (no CDN)."""
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    links = _Links()
    links.feed(page.text)
    assert links.urls and all(u.startswith("/") and not u.startswith("//") for u in links.urls), links.urls
    assert "https://" not in page.text and "http://" not in page.text
    for url in links.urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
    assert client.get("/openapi.json").status_code == 200


@pytest.fixture
def worker_factory(lethe: Lethe, s3_endpoint: str, bucket: str) -> Callable[[], object]:
    """An in-process worker on Redis, started when the test asks (the bucket seeded first)."""
    from orchestrator.testing import put_objects

    put_objects(s3_endpoint, bucket, [f"users/12/p{i}.jpg" for i in range(2)])
    return lambda: lethe.embedded_worker(concurrency=1)



def test_a_request_not_dispatched_is_shown_and_counted(client: TestClient, lethe: Lethe) -> None:
    """Tasks the broker did not take are flagged on the requests page and the request page, re-sent at
    reconcile's next pass, and counted in /metrics."""
    rid = client.post("/v1/erasure-requests", json=SUBJECT, headers=auth("admin")).json()["id"]
    with lethe.ledger.sessions() as s:
        first = s.query(Task).filter(Task.request_id == rid, Task.target == "profile-photos").one().id
    lethe.ledger.mark_not_dispatched([first], "ConnectionError")
    sign_in(client, "operator")
    row = re.search(rf'<tr class="[^"]*" data-id="{rid}">(.*?)</tr>', client.get("/").text, re.S)
    assert row and "1 not dispatched" in row.group(1) and ">next reconcile pass<" in row.group(1), row
    assert 'id="not-dispatched"' in client.get(f"/requests/{rid}").text
    assert "lethe_tasks_not_dispatched 1.0" in client.get("/metrics").text
