"""`lethe keys rotate`, `lethe certificate --public-key` and `lethe certificate --verify` as an operator runs
them: real processes, the ledger on SQLite and PostgreSQL, embedded mode (memory targets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.certificates import canonical_json
from tests.fixtures.lethe import SUBJECT_KEY
from tests.orchestrator.test_certificate_file import FORGED_ID
from tests.orchestrator.test_proof import MAP

pytestmark = pytest.mark.integration
LETHE = str(Path(sys.executable).with_name("lethe"))


@pytest.fixture
def env(ledger_url: str, tmp_path: Path, write_map: Callable[[str], Path]) -> dict[str, str]:
    from orchestrator.certificates import create_private_key

    create_private_key(tmp_path / "old.pem")
    environment = {**os.environ, "LETHE_DATABASE_URL": ledger_url.replace("postgresql+psycopg://", "postgresql://"),
                   "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(tmp_path / "old.pem"),
                   "LETHE_DATA_MAP": str(write_map(MAP))}
    environment.pop("LETHE_BROKER_URL", None)
    return environment


def lethe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LETHE, *args], env=env, capture_output=True, text=True, timeout=120)


def erase(env: dict[str, str], value: str, tmp_path: Path) -> Path:
    """Submit, wait, and save the certificate as a user would; returns the file."""
    submitted = lethe(env, "submit", "--subject", f"user_id={value}", "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    request_id = json.loads(submitted.stdout)["id"]
    shown = lethe(env, "certificate", request_id)
    assert shown.returncode == 0, shown.stderr
    path = tmp_path / f"certificate-{value}.json"
    path.write_text(shown.stdout)
    return path


def test_rotate_then_every_certificate_verifies(env: dict[str, str], tmp_path: Path) -> None:
    old_cert = erase(env, "1", tmp_path)
    rotated = lethe(env, "keys", "rotate", "--new-key", str(tmp_path / "new.pem"))
    assert rotated.returncode == 0, rotated.stderr
    assert "key_id" in rotated.stdout and (tmp_path / "new.pem").stat().st_mode & 0o777 == 0o600

    refused = lethe(env, "verify-ledger")
    assert refused.returncode == 2 and "was rotated out" in refused.stderr and "Traceback" not in refused.stderr

    env = {**env, "LETHE_SIGNING_KEY": str(tmp_path / "new.pem")}
    new_cert = erase(env, "2", tmp_path)
    assert json.loads(old_cert.read_text())["key_id"] != json.loads(new_cert.read_text())["key_id"]
    keys = lethe(env, "certificate", "--public-key")
    assert keys.returncode == 0 and keys.stdout.count("# key_id ") == 2
    (tmp_path / "lethe-public.pem").write_text(keys.stdout)
    for cert in (old_cert, new_cert):
        for extra in ([], ["--keys", str(tmp_path / "lethe-public.pem")]):
            checked = lethe(env, "certificate", "--verify", str(cert), *extra)
            assert checked.returncode == 0, checked.stderr
            assert "verifies" in checked.stdout
    verified = lethe(env, "verify-ledger")
    assert verified.returncode == 0, verified.stderr
    assert "signed through entry" in verified.stdout


def test_verify_refuses_a_prepended_duplicate(env: dict[str, str], tmp_path: Path) -> None:
    cert = erase(env, "1", tmp_path)
    forged = tmp_path / "forged.json"
    forged.write_bytes(b'{"request_id": "' + FORGED_ID.encode() + b'", '
                       + canonical_json(json.loads(cert.read_text()))[1:])
    checked = lethe(env, "certificate", "--verify", str(forged))
    assert checked.returncode == 1
    assert checked.stderr.strip().count("\n") == 0 and "'request_id' twice" in checked.stderr
    missing = lethe(env, "certificate", "--verify", str(tmp_path / "nothing.json"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
