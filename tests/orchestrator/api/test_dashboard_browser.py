"""The dashboard in Debian's Chromium, driven by Playwright, against uvicorn serving the app on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
import uvicorn
from fastapi import FastAPI

from orchestrator.api import create_app
from orchestrator.service import Lethe
from orchestrator.testing import make_bucket
from tests.orchestrator.api.conftest import TOKENS, auth, missing_bucket

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium); "
                       "`bash .ci/services.sh` installs it"),
]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
LAPTOP = {"width": 1366, "height": 768}


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """uvicorn serving ``app`` on a free loopback port, in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, lifespan="off", ws="none", http="h11", access_log=False)
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def server(lethe: Lethe, worker: None) -> Iterator[str]:
    """The API and dashboard with a worker running; yields the base URL."""
    with serving(create_app(lethe)) as base:
        yield base


@pytest.fixture
def page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=LAPTOP)
        context.set_default_timeout(20_000)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def file_request(base: str, user_id: str) -> str:
    response = httpx2.post(f"{base}/v1/erasure-requests", json={"subject": {"user_id": user_id}},
                           headers=auth("requester"), timeout=10)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["id"]
    return request_id


def test_operator_follows_a_request_and_retries_a_failed_task(
        server: str, page, tmp_path: Path, s3_endpoint: str,  # type: ignore[no-untyped-def]
        point_map: Callable[[str], Path]) -> None:
    """Sign in, see a filed request complete live, open it, then retry a failed task from the browser."""
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page.goto(server + "/")
    assert "/login" in page.url
    page.fill("#token", TOKENS["operator"])
    page.click("button[type=submit]")
    page.wait_for_url(server + "/")
    expect(page.locator("header.top")).to_contain_text("oscar")

    # A request filed through the API appears and completes on the open page, by live refresh only.
    first = file_request(server, "12")
    row = page.locator(f'tr[data-id="{first}"]')
    expect(row.locator(".badge.st-completed")).to_be_visible()
    expect(row).to_contain_text("2/2")
    page.screenshot(path=str(shots / "1-requests.png"), full_page=True)

    row.locator("a").click()
    page.wait_for_url(f"{server}/requests/{first}")
    expect(page.locator("#request-status")).to_have_text("completed")
    expect(page.locator('#tasks tr[data-target="profile-photos"]')).to_contain_text("8")
    expect(page.locator("#certificate")).to_be_visible()
    expect(page.locator("#audit")).to_contain_text("api:alice(requester)")

    # A request whose bucket does not exist yet fails; the operator creates it and clicks Retry.
    absent = missing_bucket()
    point_map(absent)
    second = file_request(server, "123")
    page.goto(f"{server}/requests/{second}")
    expect(page.locator("#request-status")).to_have_text("failed")
    failed_row = page.locator('#tasks tr[data-target="profile-photos"]')
    expect(failed_row).to_contain_text("NoSuchBucket")
    page.screenshot(path=str(shots / "2-failed.png"), full_page=True)
    make_bucket(s3_endpoint, absent)
    page.click("#retry")
    expect(page.locator(".notice")).to_contain_text("sent back")
    expect(page.locator("#request-status")).to_have_text("completed")
    expect(failed_row.locator("td").nth(5)).to_have_text("2")  # attempts
    expect(page.locator("#audit")).to_contain_text("dashboard:oscar(operator)")
    page.screenshot(path=str(shots / "3-retried.png"), full_page=True)

    page.goto(server + "/overview")
    expect(page.locator("svg.chart").first).to_be_visible()
    expect(page.locator("#failures")).to_contain_text("profile-photos")
    page.screenshot(path=str(shots / "4-overview.png"), full_page=True)
    for text in (page.content(), *(p.read_bytes().decode("latin-1") for p in shots.iterdir())):
        assert "TOKEN" not in text and TOKENS["operator"] not in text


def test_operator_tells_a_stuck_request_from_a_healthy_one(
        lethe: Lethe, page, tmp_path: Path, s3_endpoint: str, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """No worker runs: the request waits, the overview shows no worker on purge.s3 and a message waiting;
    once quiet past its lease the request is flagged stalled with its re-send due. A dead-lettered event is
    counted. A worker starts: it is seen on purge.s3, the queue drains and the request completes."""
    from playwright.sync_api import expect
    from sqlalchemy import update

    from orchestrator.ledger.models import AuditEntry, Request, Task
    from orchestrator.testing import put_objects

    expect.set_options(timeout=20_000)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    put_objects(s3_endpoint, bucket, ["users/12/p.jpg"])
    app = create_app(lethe)
    app.state.broker.probe_seconds = 0.5
    with serving(app) as server:
        page.goto(server + "/login")
        page.fill("#token", TOKENS["operator"])
        page.click("button[type=submit]")
        page.wait_for_url(server + "/")
        rid = file_request(server, "12")
        page.reload()
        row = page.locator(f'tr[data-id="{rid}"]')
        expect(row.locator("td.progress")).to_have_text(re.compile(r"^\d+s ago$"))
        expect(row.locator("td.resend")).to_have_text(re.compile(r"^in (\d+s|1m)$"))

        past = datetime.now(UTC) - timedelta(hours=3)
        with lethe.ledger.sessions.begin() as s:  # three quiet hours, as if the worker had died
            s.execute(update(Request).where(Request.id == rid).values(received_at=past))
            s.execute(update(AuditEntry).where(AuditEntry.request_id == rid).values(at=past))
            s.execute(update(Task).where(Task.request_id == rid, Task.lease_expires_at.is_not(None))
                      .values(lease_expires_at=past + timedelta(minutes=1)))
        lethe.ledger.count_dead_letter("bad-signature")
        expect(row.locator("td.progress.stalled")).to_have_text("3h 0m ago")  # by live refresh
        expect(row.locator("td.resend")).to_have_text("due now")
        expect(page.locator("#stalled-count b")).to_have_text("1")
        page.screenshot(path=str(shots / "1-stalled.png"), full_page=True)

        page.goto(server + "/overview")
        queue = page.locator('#queues tr[data-queue="purge.s3"]')
        expect(queue.locator("td.workers")).to_have_text("0")
        expect(queue.locator("td.workers")).to_have_class(re.compile("stalled"))
        expect(queue.locator("td.depth")).to_have_text("1")
        expect(page.locator("#dead-letters")).to_contain_text("bad-signature")
        page.screenshot(path=str(shots / "2-no-worker.png"), full_page=True)

        with lethe.embedded_worker(concurrency=1):
            expect(queue.locator("td.workers")).to_have_text("1", timeout=30_000)  # by live refresh
            expect(queue.locator("td.depth")).to_have_text("0")
            page.screenshot(path=str(shots / "3-worker.png"), full_page=True)
            page.goto(f"{server}/requests/{rid}")
            expect(page.locator("#request-status")).to_have_text("completed", timeout=30_000)
        expect(page.locator("#last-progress")).to_have_count(0)


def test_swagger_ui_renders_the_api_offline(lethe: Lethe, page) -> None:  # type: ignore[no-untyped-def]
    """/docs renders every route of /openapi.json from the API's own assets; no request leaves the host."""
    from playwright.sync_api import expect

    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("http://127.0.0.1:") else None)
    with serving(create_app(lethe)) as server:
        page.goto(server + "/docs")
        expect(page.locator(".opblock-summary-path").first).to_be_visible()
        expect(page.locator(".swagger-ui")).to_contain_text("/v1/erasure-requests/{request_id}/certificate")
        expect(page.locator(".swagger-ui")).not_to_contain_text("Unable to render")
    assert outside == []
