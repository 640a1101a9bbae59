"""Bodies over 64 KiB get 413 before they are read (a real `lethe api` process), and /v1 reads JSON whatever
Content-Type says (the README's curl)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest
from fastapi.testclient import TestClient

from tests.fixtures.services import running_process
from tests.orchestrator.api.conftest import auth
from tests.orchestrator.api.test_cli_api import LETHE, environment, free_port

pytestmark = pytest.mark.integration
MB = 1024 * 1024


@pytest.fixture
def api(tmp_path: Path, tokens_file: Path) -> Iterator[tuple[int, psutil.Process]]:
    """`lethe api` on a free port; yields the port and the server process."""
    port = free_port()
    log = tmp_path / "api.log"
    with running_process([LETHE, "api", "--port", str(port)], environment(tmp_path, tokens_file), log) as proc:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield port, psutil.Process(proc.pid)


def rss(process: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def response_of(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_streamed_body_is_refused_once_it_passes_64_kib(api: tuple[int, psutil.Process]) -> None:
    """A chunked body with no Content-Length and no token: 413 as soon as it passes 64 KiB, and the server
    neither waits for the rest nor grows by what was sent."""
    port, process = api
    before = rss(process)
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/erasure-requests HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n\r\n")
        chunk = b"a" * MB
        try:
            while sent < 150 * MB:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: it does not read the rest
        answer = response_of(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer or b"413" in answer
    assert sent < 32 * MB, f"the server read {sent // MB} MB of the body"  # 4 MB here: socket buffers
    assert rss(process) - before < 20 * MB, (before, rss(process))


def test_a_large_content_length_is_refused_before_reading(api: tuple[int, psutil.Process]) -> None:
    """A declared 150 MB body is answered 413 before a byte of it is sent (before auth: no token)."""
    port, process = api
    before = rss(process)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/erasure-requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (150 * MB))
        answer = response_of(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert rss(process) - before < 20 * MB


def test_small_bodies_pass_and_big_ones_get_the_error_shape(client: TestClient) -> None:
    """Up to 64 KiB is read as usual (here a 422 for an identifier too long); above is 413 with the error
    shape, for the API and the dashboard's forms alike, with or without a token."""
    padding = {"subject": {"user_id": "1" * (60 * 1024)}}
    assert client.post("/v1/erasure-requests", json=padding, headers=auth("admin")).status_code == 422
    big = {"subject": {"user_id": "1" * (65 * 1024)}}
    for headers in (auth("admin"), {}):
        response = client.post("/v1/erasure-requests", json=big, headers=headers)
        assert response.status_code == 413, response.text
        assert response.json() == {"error": {"code": "too_large", "message": "the request body is over 64 KiB"}}
    assert client.post("/login", data={"token": "x" * (70 * 1024)}).status_code == 413
    assert client.get("/v1/erasure-requests", headers=auth("admin")).json()["items"] == []


def test_json_without_its_content_type_is_accepted(client: TestClient) -> None:
    """The README's curl (-d sends application/x-www-form-urlencoded) files the request; no header works too;
    a body that is not JSON is 400 malformed_json whatever its type."""
    body = b'{"subject": {"user_id": "12"}}'
    as_curl = client.post("/v1/erasure-requests", content=body,
                          headers={**auth("admin"), "Content-Type": "application/x-www-form-urlencoded"})
    assert as_curl.status_code == 202, as_curl.text
    bare = client.post("/v1/erasure-requests", content=b'{"subject": {"user_id": "123"}}', headers=auth("admin"))
    assert bare.status_code == 202, bare.text
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        broken = client.post("/v1/erasure-requests", content=b"subject=12",
                             headers={**auth("admin"), "Content-Type": content_type})
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "malformed_json", content_type
