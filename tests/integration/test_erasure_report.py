"""`lethe report ID [--out FILE]` as an operator runs it: the real console script on an SQLite ledger, a
request one target of which fails; the report verifies offline with the published keys."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.certificates import parse_public_keys, verify_certificate
from tests.fixtures.lethe import SUBJECT_KEY

pytestmark = pytest.mark.integration

LETHE = str(Path(sys.executable).with_name("lethe"))
RAW = "55501234"
MAP = """
version: 1
identifiers: {user_id: "[0-9]+"}
targets:
  - {name: sessions, kind: memory, store: sessions, match: {owner: "{user_id}"}}
  - {name: flaky, kind: memory, store: flaky, match: {owner: "{user_id}"}, fail_times: 99}
"""


@pytest.fixture
def env(tmp_path: Path, write_map: Callable[[str], Path], signing_key_file: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LETHE_")},
            "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'lethe.db'}", "LETHE_DATA_MAP": str(write_map(MAP)),
            "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(signing_key_file),
            "LETHE_TASK_MAX_RETRIES": "0", "COLUMNS": "200"}


def lethe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LETHE, *args], env=env, capture_output=True, text=True, timeout=120)


def test_report_of_a_failed_request_verifies_and_names_what_was_not_erased(env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    filed = lethe(env, "submit", "--subject", f"user_id={RAW}", "--json")
    assert filed.returncode == 1, filed.stderr  # flaky failed, so there is no certificate
    request_id = json.loads(filed.stdout)["id"]
    assert lethe(env, "certificate", request_id).returncode != 0

    out = tmp_path / "report.json"
    written = lethe(env, "report", request_id[:8], "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = out.read_bytes()
    assert RAW.encode() not in data
    report = json.loads(data)
    assert report["kind"] == "erasure-report" and report["status"] == "failed"
    by_target = {t["target"]: t for t in report["targets"]}
    assert by_target["flaky"]["status"] == "failed" and "injected failure" in by_target["flaky"]["error"]
    assert by_target["sessions"]["status"] == "completed" and by_target["sessions"]["residue"] == 0
    assert report["erased"] == ["sessions"] and report["not_erased"] == ["flaky"]

    keys_file = tmp_path / "lethe-public.pem"
    keys_file.write_text(lethe(env, "certificate", "--public-key").stdout)
    assert verify_certificate(data, parse_public_keys(keys_file.read_text()))["request_id"] == request_id
    checked = lethe(env, "certificate", "--verify", str(out), "--keys", str(keys_file))
    assert checked.returncode == 0, checked.stderr
    out.write_bytes(data.replace(b'"failed"', b'"completed"', 1))
    assert lethe(env, "certificate", "--verify", str(out), "--keys", str(keys_file)).returncode == 1

    again = lethe(env, "report", request_id, "--out", str(out))  # never overwrites
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1 and "exists" in again.stderr
    printed = lethe(env, "report", request_id)
    assert printed.returncode == 0 and json.loads(printed.stdout)["request_id"] == request_id
