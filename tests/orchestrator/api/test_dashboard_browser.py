"""The dashboard in Debian's Chromium, driven by Playwright, against uvicorn serving the app on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
import uvicorn

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


@pytest.fixture
def server(lethe: Lethe, worker: None) -> Iterator[str]:
    """uvicorn serving the API and dashboard on a free loopback port, in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(lethe), log_config=None, lifespan="off", ws="none", http="h11",
                            access_log=False)
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
def page(server: str) -> Iterator[object]:
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
