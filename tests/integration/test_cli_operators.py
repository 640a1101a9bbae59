"""The `lethe` command for operators and newcomers: one line and the SPEC's exit code for every mistake, ids
as people type them, help that says what each option takes, and what a bulk erasure filed for which line.

The real console script in subprocesses; a real PostgreSQL, Redis and SQLite."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import Settings
from orchestrator.events import event_dedupe_key
from orchestrator.service import Lethe
from tests.fixtures.lethe import SUBJECT_KEY

pytestmark = pytest.mark.integration

LETHE = str(Path(sys.executable).with_name("lethe"))
DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1
MAP = """
version: 1
identifiers: {user_id: "[0-9]+"}
targets:
  - {name: sessions, kind: memory, store: sessions, match: {owner: "{user_id}"}}
  - {name: carts, kind: memory, store: carts, match: {owner: "{user_id}"}}
  - {name: faces, kind: memory, store: faces, match: {owner: "{user_id}"}, after: [sessions]}
  - {name: flaky, kind: memory, store: flaky, match: {owner: "{user_id}"}, fail_times: 99}
"""
PYTHON_TYPES = re.compile(r"<(bool|str|int|float|path|file|datetime|list\[[^]]*\]|tuple[^>]*)>")


@pytest.fixture
def env(tmp_path: Path, write_map: Callable[[str], Path], signing_key_file: Path) -> dict[str, str]:
    """Embedded mode (no broker) on an SQLite ledger; `flaky` fails at once (no retries)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LETHE_")},
            "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'lethe.db'}", "LETHE_DATA_MAP": str(write_map(MAP)),
            "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(signing_key_file),
            "LETHE_TASK_MAX_RETRIES": "0", "COLUMNS": "200", "USER": "alice", "LOGNAME": "alice"}


def lethe(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LETHE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Exit ``code``, and stderr is exactly one line, no traceback, naming every word."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_operator_errors_are_one_line_with_the_spec_exit_code(env: dict[str, str], pg_database: str,
                                                              redis_broker: str, busy_port: int) -> None:
    """Unreachable infrastructure exits 4 naming which and what to check; a setting that is not a URL, a
    taken port, a bad option exit 2. Each is one line on stderr."""
    pg = pg_database.replace("postgresql+psycopg://", "postgresql://")
    no_db = re.sub(r"/[^/]+$", "/lethe_no_such_database", pg)
    wrong_port = re.sub(r":5432/", ":1/", pg)
    cases: list[tuple[dict[str, str], tuple[str, ...], int, tuple[str, ...]]] = [
        ({"LETHE_DATABASE_URL": no_db}, ("list",), 4, ("ledger database", "does not exist", "LETHE_DATABASE_URL")),
        ({"LETHE_DATABASE_URL": wrong_port}, ("list",), 4, ("ledger database", ":1/", "LETHE_DATABASE_URL")),
        ({"LETHE_DATABASE_URL": "not a url"}, ("list",), 2, ("LETHE_DATABASE_URL", "is not a database URL")),
        ({"LETHE_DATABASE_URL": "not a url"}, ("api",), 2, ("LETHE_DATABASE_URL",)),
        ({"LETHE_DATABASE_URL": wrong_port}, ("api",), 4, ("ledger database",)),
        ({"LETHE_BROKER_URL": DEAD_BROKER}, ("migrate",), 4, ("broker", "127.0.0.1:1", "LETHE_BROKER_URL")),
        ({"LETHE_BROKER_URL": DEAD_BROKER, "LETHE_EVENT_KEY": "k"}, ("intake",), 4, ("broker", "LETHE_BROKER_URL")),
        ({"LETHE_BROKER_URL": DEAD_BROKER}, ("submit", "--subject", "user_id=5"), 4, ("broker",)),
        ({"LETHE_BROKER_URL": "rediss//bad"}, ("list",), 2, ("LETHE_BROKER_URL", "is not a broker URL")),
        ({"LETHE_BROKER_URL": "rediss//bad"}, ("worker",), 2, ("LETHE_BROKER_URL",)),
        ({}, ("api", "--port", str(busy_port)), 2, (f"127.0.0.1:{busy_port}", "--port")),
        ({}, ("list", "--status", "bogus"), 2, ("unknown status 'bogus'",)),
        ({}, ("submit", "--subject", "user_id=5", "--regime", "lgpd"), 2, ("--regime", "gdpr")),
        ({}, ("status", "--bogus-option"), 2, ("--bogus-option",)),
        ({}, ("status", "abc"), 2, ("no request",)),
    ]
    for overrides, args, code, words in cases:
        assert_one_line(lethe({**env, **overrides}, *args, timeout=60), code, *words)
    # The broker was down at submit: nothing was filed (SPEC: nothing half-done).
    assert json.loads(lethe(env, "list", "--json").stdout)["items"] == []


def test_list_shows_failed_targets_and_ids_every_command_takes(env: dict[str, str]) -> None:
    """`lethe list` shows `3/4, 1 failed` for a failed request (as the dashboard does) and each id as its
    shortest unique prefix; `status`, `certificate` and the rest take that prefix, or the whole id."""
    filed = lethe(env, "submit", "--subject", "user_id=7", "--json")
    assert filed.returncode == 1, filed.stderr  # `flaky` failed
    request_id = json.loads(filed.stdout)["id"]
    listed = lethe(env, "list")
    row = next(line for line in listed.stdout.splitlines() if request_id[:8] in line)
    assert "3/4, 1 failed" in row and "failed" in row
    shown = re.search(r"([0-9a-f-]{8,36})", row).group(1)  # type: ignore[union-attr]
    assert request_id.startswith(shown) and "…" not in listed.stdout
    for given in (shown, request_id[:4], request_id, request_id.upper()):
        status = lethe(env, "status", given, "--json")
        assert status.returncode == 1 and json.loads(status.stdout)["id"] == request_id, given
    assert_one_line(lethe(env, "status", request_id[:3]), 2, "4 or more")


def test_cli_actions_are_audited_as_cli_and_the_os_user(env: dict[str, str], make_lethe: Callable[..., Lethe]) -> None:
    """As the API records its token's name, the CLI records `cli:<OS user>`."""
    request_id = json.loads(lethe(env, "submit", "--subject", "user_id=8", "--json").stdout)["id"]
    assert lethe(env, "retry", request_id[:8]).returncode == 1  # `flaky` fails again
    ledger = make_lethe(database_url=env["LETHE_DATABASE_URL"], data_map=Path(env["LETHE_DATA_MAP"])).ledger
    actors = {entry["action"]: entry["actor"] for entry in ledger.audit_trail(request_id)}
    assert actors["request.received"] == actors["request.retried"] == "cli:alice"
    assert {a for a in actors.values() if a.startswith("cli")} == {"cli:alice"}


def test_bulk_submit_maps_each_line_to_its_request_and_reports_progress(env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    """`--json` gives each input line's request id; without a terminal, progress is printed as lines."""
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("21\n\n22\n23\n")
    result = lethe(env, "submit", "--subjects-file", str(subjects), "--json")
    report = json.loads(result.stdout)
    assert [item["line"] for item in report["lines"]] == [1, 3, 4]
    assert [item["id"] for item in report["lines"]] == report["requests"] and len(set(report["requests"])) == 3
    assert report["statuses"] == {"failed": 3}
    assert re.search(r"^filed 3/3 · finished 3/3 · \d+ s$", result.stderr, re.MULTILINE), result.stderr
    text = lethe(env, "submit", "--subjects-file", str(subjects))
    assert [line.split("\t")[0] for line in text.stdout.splitlines()] == ["1", "3", "4"]


def test_status_finds_the_request_an_event_made(env: dict[str, str], make_lethe: Callable[..., Lethe]) -> None:
    """`lethe status --event SOURCE ID` finds the request a platform event filed; another event exits 2."""
    service = make_lethe(database_url=env["LETHE_DATABASE_URL"], data_map=Path(env["LETHE_DATA_MAP"]))
    request_id, _ = service.submit({"user_id": "31"}, idempotency_key=event_dedupe_key("//accounts", "evt-1"),
                                   actor="event://accounts")
    found = lethe(env, "status", "--event", "//accounts", "evt-1", "--json")
    assert found.returncode in (0, 1, 3) and json.loads(found.stdout)["id"] == request_id, found.stderr
    assert_one_line(lethe(env, "status", "--event", "//accounts", "evt-2"), 2, "no request was filed")


def test_lineage_list_shows_recorded_datasets(env: dict[str, str], tmp_path: Path) -> None:
    members = tmp_path / "members.txt"
    members.write_text("1\n2\n3\n")
    recorded = lethe(env, "lineage", "record", "--dataset-name", "faces-a", "--dataset-digest", "v1",
                     "--subjects-file", str(members))
    assert recorded.returncode == 0, recorded.stderr
    listed = json.loads(lethe(env, "lineage", "list", "--json").stdout)["items"]
    assert [(d["name"], d["digest"], d["members"]) for d in listed] == [("faces-a", "v1", 3)]
    table = lethe(env, "lineage", "list").stdout
    assert "faces-a" in table and "3" in table and "1\n" not in table  # counts, never members


def test_help_says_what_each_option_takes_and_the_environment_it_reads() -> None:
    """No Python types (`<bool>`, `<list[str]>`), every option described, every command's LETHE_* variables
    named, and `--version`."""
    runner = CliRunner()
    root = typer.main.get_command(app)

    def leaves(group: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                yield from leaves(command, (*path, name))
            else:
                yield (*path, name), command

    commands = dict(leaves(root))
    assert {("lineage", "list"), ("lineage", "record"), ("status",), ("hold", "add")} <= set(commands)
    for path, command in commands.items():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert not PYTHON_TYPES.search(result.output), (path, PYTHON_TYPES.search(result.output))
        assert "Environment: " in result.output, path
        for param in command.params:  # type: ignore[attr-defined]
            assert getattr(param, "help", None), (path, param.name, "has no help")
    for group in ((), ("hold",), ("lineage",)):
        assert not PYTHON_TYPES.search(runner.invoke(app, [*group, "--help"], env={"COLUMNS": "200"}).output)
    settings = {f"LETHE_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"LETHE_[A-Z_]+", "".join(
        runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output for path in commands)))
    assert named <= settings, named - settings
    version = subprocess.run([LETHE, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.fullmatch(r"lethe \d+\.\d+\.\d+\S*\n", version.stdout)
