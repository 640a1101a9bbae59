"""The `lethe` command as a user runs it: real processes, Redis, PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.testing import FAKE_AWS_ENV, put_objects, versions_per_owner
from tests.fixtures.lethe import SUBJECT_KEY
from tests.fixtures.services import running_process

pytestmark = pytest.mark.integration

LETHE = str(Path(sys.executable).with_name("lethe"))
MAP = """
version: 1
identifiers: [user_id]
targets:
  - name: profile-photos
    kind: s3
    endpoint_url: {endpoint}
    bucket: {bucket}
    prefix: "users/{{user_id}}/"
"""
USERS = ["12", "123", "1234", "8675309123"]
HOSTILE = [
    "*", "?", "", "..", "a/b", "users/../123", "12\n", "\x1b[2J", "1\u200b2", "1" * 10_000, " 12", "12*", "%",
]


@pytest.fixture
def env(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str,
        write_map: Callable[[str], Path], signing_key_file: Path) -> dict[str, str]:
    """Environment of a lethe deployment on the test services, over a seeded bucket."""
    put_objects(s3_endpoint, bucket, [f"users/{u}/p{i}.jpg" for u in USERS for i in range(2)], versions=2)
    put_objects(s3_endpoint, bucket, [f"users/{u}/old.jpg" for u in USERS], delete_marker=True)
    path = write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket))
    return {**os.environ, **FAKE_AWS_ENV, "LETHE_BROKER_URL": redis_broker, "LETHE_DATABASE_URL":
            pg_database.replace("postgresql+psycopg://", "postgresql://"), "LETHE_DATA_MAP": str(path),
            "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(signing_key_file)}


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """A `lethe worker` process (prefork, 2 children); yields its log file."""
    log = tmp_path / "worker.log"
    with running_process([LETHE, "worker", "-c", "2"], env, log, stop_timeout=20):
        yield log


def lethe(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LETHE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_submit_wait_json_erases_12_and_not_123(env: dict[str, str], worker: Path, s3_endpoint: str,
                                               bucket: str) -> None:
    """`lethe submit --subject user_id=12 --wait --json` removes users/12/* and nothing of users/123/*."""
    before = versions_per_owner(s3_endpoint, bucket)
    result = lethe(env, "submit", "--subject", "user_id=12", "--wait", "--json", "--timeout", "90")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["status"] == "completed" and status["scope"] == "subject" and status["dry_run"] is False
    assert status["tasks"] == [{**status["tasks"][0], "target": "profile-photos", "kind": "s3",
                                "status": "completed", "deleted": 6, "residue": 0, "attempts": 1,
                                "error": None}]
    after = versions_per_owner(s3_endpoint, bucket)
    assert after["12"] == 0
    assert {u: after[u] for u in USERS[1:]} == {u: before[u] for u in USERS[1:]}

    shown = lethe(env, "status", status["id"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == status["id"]
    listed = json.loads(lethe(env, "list", "--json").stdout)
    assert [i["id"] for i in listed["items"]] == [status["id"]] and listed["next"] is None


def test_submit_subjects_file_erases_each_line_and_nothing_else(env: dict[str, str], worker: Path, s3_endpoint: str,
                                                                bucket: str, tmp_path: Path) -> None:
    """`lethe submit --subjects-file` files one request per line (12 and 1234), waits for all, and 123 and
    8675309123 keep every version."""
    before = versions_per_owner(s3_endpoint, bucket)
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("12\n\n1234\n")
    result = lethe(env, "submit", "--subjects-file", str(subjects), "--wait", "--json", "--timeout", "90")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["requests"]) == 2 and report["statuses"] == {"completed": 2}
    after = versions_per_owner(s3_endpoint, bucket)
    assert set(after) == {"123", "8675309123"} and after == {u: before[u] for u in ("123", "8675309123")}


def test_subjects_file_with_one_bad_line_files_nothing(env: dict[str, str], tmp_path: Path) -> None:
    """A hostile value on line 2 exits 2 naming the line; no request is filed."""
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("12\n*\n123\n")
    result = lethe(env, "submit", "--subjects-file", str(subjects))
    assert result.returncode == 2 and "line 2" in result.stderr and "Traceback" not in result.stderr
    listed = lethe(env, "list", "--json")
    assert json.loads(listed.stdout)["items"] == []


def test_worker_logs_are_json_with_ids_and_no_identifier(env: dict[str, str], worker: Path) -> None:
    """Worker log lines are JSON, carry request and task ids, and never the subject's value."""
    result = lethe(env, "submit", "--subject", "user_id=8675309123", "--wait", "--json", "--timeout", "90")
    assert result.returncode == 0, result.stderr
    request_id = json.loads(result.stdout)["id"]
    lines = [json.loads(line) for line in worker.read_text().splitlines() if line.startswith("{")]
    completed = [e for e in lines if e.get("event") == "task.completed"]
    assert completed and completed[0]["request_id"] == request_id and completed[0]["task_id"]
    assert "8675309123" not in worker.read_text()
    assert "8675309123" not in result.stderr


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_identifier_is_refused_and_nothing_is_deleted(env: dict[str, str], value: str,
                                                             s3_endpoint: str, bucket: str) -> None:
    """A value that could widen a selector exits 2 with a message; no request, nothing deleted."""
    before = versions_per_owner(s3_endpoint, bucket)
    result = lethe(env, "submit", "--subject", f"user_id={value}", "--wait")
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert versions_per_owner(s3_endpoint, bucket) == before
    assert json.loads(lethe(env, "list", "--json").stdout)["items"] == []


def test_user_errors_exit_2_without_traceback(env: dict[str, str], tmp_path: Path) -> None:
    """Unknown ids, unknown kinds, malformed --subject and broken maps are exit 2 with a message."""
    cases = [
        ("status", "00000000-0000-0000-0000-000000000000"),
        ("status", "not-an-id"),
        ("submit", "--subject", "email=a@example.org"),
        ("submit", "--subject", "user_id"),
        ("submit", "--subject", "user_id=5", "--regime", "lgpd"),
        ("check-map", str(tmp_path / "missing.yaml")),
        ("submit", "--dataset", "not-declared"),
        ("submit", "--dataset", "x", "--subject", "user_id=5"),
        ("submit",),
        ("approve", "00000000-0000-0000-0000-000000000000"),
        ("hold", "add", "--subject", "user_id=*", "--reason", "r"),
    ]
    for args in cases:
        result = lethe(env, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, args


def test_check_map_prints_the_plan_and_strict_checks_stores(env: dict[str, str], tmp_path: Path) -> None:
    """check-map prints targets in order; --strict fails on a store with neither target nor reason."""
    ok = lethe(env, "check-map")
    assert ok.returncode == 0 and "profile-photos" in ok.stdout
    strict_map = tmp_path / "strict.yaml"
    strict_map.write_text(Path(env["LETHE_DATA_MAP"]).read_text() + "stores:\n  - {name: crm}\n")
    assert lethe(env, "check-map", str(strict_map)).returncode == 0
    strict = lethe(env, "check-map", str(strict_map), "--strict")
    assert strict.returncode == 2 and "crm" in strict.stderr


def test_submit_without_worker_then_reconcile_in_embedded_mode(env: dict[str, str], tmp_path: Path,
                                                               s3_endpoint: str, bucket: str) -> None:
    """With no broker URL, submit runs its own in-process worker and waits: SQLite ledger, no services."""
    embedded = {k: v for k, v in env.items()
                if k not in ("LETHE_BROKER_URL", "LETHE_SUBJECT_KEY", "LETHE_SIGNING_KEY")}
    embedded["LETHE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'embedded.db'}"
    result = lethe(embedded, "submit", "--subject", "user_id=1234", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "completed"
    assert versions_per_owner(s3_endpoint, bucket)["1234"] == 0
    key_file = tmp_path / "embedded.db.subject-key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_postgresql_ledger_refuses_to_start_without_a_subject_key(env: dict[str, str]) -> None:
    """With PostgreSQL and no LETHE_SUBJECT_KEY, commands exit 2 and say what to set."""
    no_key = {k: v for k, v in env.items() if k != "LETHE_SUBJECT_KEY"}
    result = lethe(no_key, "list")
    assert result.returncode == 2 and "LETHE_SUBJECT_KEY" in result.stderr


def test_certificate_and_verify_ledger_commands(env: dict[str, str], worker: Path, tmp_path: Path) -> None:
    """`lethe certificate` prints a certificate the public key verifies; verify-ledger catches tampering."""
    import base64

    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from sqlalchemy import create_engine, text

    result = lethe(env, "submit", "--subject", "user_id=123", "--wait", "--json", "--timeout", "90")
    assert result.returncode == 0, result.stderr
    request_id = json.loads(result.stdout)["id"]
    cert = json.loads(lethe(env, "certificate", request_id).stdout)
    pem = lethe(env, "certificate", "--public-key").stdout
    body = json.dumps({k: v for k, v in cert.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()
    load_pem_public_key(pem.encode()).verify(base64.b64decode(cert["signature"]), body)  # type: ignore[union-attr]

    assert lethe(env, "verify-ledger").returncode == 0
    engine = create_engine(env["LETHE_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE completion_records SET deleted = deleted + 1"))
    engine.dispose()
    tampered = lethe(env, "verify-ledger")
    assert tampered.returncode == 1 and f"completion record {request_id}/profile-photos" in tampered.stderr
    assert lethe(env, "certificate").returncode == 2
