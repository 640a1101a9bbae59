"""`lethe api` as an operator starts it: a real process, uvicorn, embedded worker without a broker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from tests.fixtures.lethe import SUBJECT_KEY
from tests.orchestrator.api.conftest import TOKENS, auth

pytestmark = pytest.mark.integration
LETHE = str(Path(sys.executable).with_name("lethe"))
MAP = """
version: 1
identifiers: [user_id]
targets:
  - name: sessions
    kind: memory
    store: sessions
    match: {owner: "{user_id}"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(tmp_path: Path, tokens_file: Path) -> dict[str, str]:
    (tmp_path / "datamap.yaml").write_text(MAP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    return {**env, "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'lethe.db'}", "LETHE_SUBJECT_KEY": SUBJECT_KEY,
            "LETHE_DATA_MAP": str(tmp_path / "datamap.yaml"), "LETHE_API_TOKENS": str(tokens_file)}


def test_lethe_api_serves_and_runs_requests_in_embedded_mode(tmp_path: Path, tokens_file: Path) -> None:
    """Without a broker URL, `lethe api` runs an in-process worker: a request filed over HTTP completes."""
    port = free_port()
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([LETHE, "api", "--port", str(port)], env=environment(tmp_path, tokens_file),
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        created = httpx2.post(f"{base}/v1/erasure-requests", json={"subject": {"user_id": "7"}},
                              headers=auth("requester"), timeout=10)
        assert created.status_code == 202, created.text
        url = f"{base}/v1/erasure-requests/{created.json()['id']}"
        for _ in range(100):
            status = httpx2.get(url, headers=auth("requester"), timeout=5).json()
            if status["status"] == "completed":
                break
            time.sleep(0.1)
        assert status["status"] == "completed", status
        assert httpx2.get(f"{base}/", follow_redirects=False, timeout=5).status_code == 303
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and TOKENS["requester"] not in text
    assert "GET /healthz" in text  # uvicorn's access log, through lethe's JSON logging
