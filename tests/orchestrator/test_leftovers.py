"""No raw identifier is left behind: not in the SQLite files after completion, not in a log line in any
written form, not in a hold's or an extension's reason (which the audit chain keeps for good)."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from orchestrator import logs
from orchestrator.certificates import load_private_key
from orchestrator.datamap import DataMap
from orchestrator.ledger import InvalidInput, Ledger, LedgerError
from orchestrator.ledger.models import AuditEntry, Request, Task
from tests.fixtures.lethe import file_request

MAP = """
version: 1
identifiers: [user_id, email]
targets:
  - {name: mail, kind: memory, store: mail, match: {to: "{email}"}}
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
"""
DATAMAP = DataMap.parse(MAP)
EMAIL = "carl.leftover@example.com"


def subject(value: str = EMAIL):  # type: ignore[no-untyped-def]
    return DATAMAP.parse_subject({"email": value})


def complete_all(ledger: Ledger, request_id: str) -> None:
    with ledger.sessions() as s:
        ids = list(s.scalars(select(Task.id).where(Task.request_id == request_id, Task.status == "pending")))
    for task_id in ids:
        assert ledger.claim(task_id) is not None
        ledger.complete(task_id, 1, 0)


@pytest.fixture
def sqlite_ledger(tmp_path: Path, subject_key: bytes, signing_key) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", subject_key, signing_key, lease_seconds=60)
    yield led
    led.engine.dispose()


def ledger_files(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]


def test_sqlite_files_hold_no_sealed_value_after_completion(sqlite_ledger: Ledger, tmp_path: Path) -> None:
    """The sealed identifier is in the ledger while the request runs; once it completed, neither it nor the
    raw value is in the database file, its WAL or its shared-memory file (secure_delete, checkpoint)."""
    request_id, _, _ = file_request(sqlite_ledger, DATAMAP, subject())
    with sqlite_ledger.sessions() as s:
        sealed = s.get(Request, request_id).sealed_subject  # type: ignore[union-attr]
    assert sealed and any(sealed in p.read_bytes() for p in ledger_files(tmp_path))  # the test sees it
    complete_all(sqlite_ledger, request_id)
    assert sqlite_ledger.status(request_id)["status"] == "completed"
    for path in ledger_files(tmp_path):
        data = path.read_bytes()
        assert sealed not in data, path.name
        assert EMAIL.encode() not in data and EMAIL.encode("utf-16-le") not in data, path.name


def test_sqlite_files_are_private(sqlite_ledger: Ledger, tmp_path: Path) -> None:
    """The database and its WAL are created 0600 (the subject key file lies beside them)."""
    file_request(sqlite_ledger, DATAMAP, subject())
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ledger_files(tmp_path)}
    assert {"ledger.db", "ledger.db-wal"} <= set(files)
    assert all(mode == 0o600 for name, mode in files.items() if not name.endswith(".lock")), files


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path, subject_key: bytes,
                                                          signing_key) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ledger.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Ledger(f"sqlite:///{path}", subject_key, signing_key).engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(stream=stream)
    yield stream
    logs.configure()


def rendered(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line stays valid JSON


def test_a_library_traceback_is_scrubbed_after_formatting(log_lines: io.StringIO) -> None:
    """A stdlib record with exc_info: the message, its arguments and the formatted traceback are clean."""
    value = "josé.ünicode@example.com"
    with logs.redact_values([value]):
        try:
            raise KeyError(value)
        except KeyError:
            logging.getLogger("somelib").error("lookup of %r failed\n%s", value, value, exc_info=True)
        logs.get_logger("lethe.test").warning("task.failed", error=RuntimeError(value), values=[value])
    text = log_lines.getvalue()
    assert "ncode@" not in text and "nicode" not in text, text  # neither the value nor its JSON escape
    lines = rendered(log_lines)
    assert "KeyError" in str(lines[0]["exception"]) and logs.REDACTED in str(lines[0]["exception"])


@pytest.mark.parametrize("form", [
    "carl@x.org", "CARL@X.ORG", "'carl@x.org'", quote("carl@x.org", safe=""), quote("carl@x.org"),
    json.dumps("carl@x.org"), "mail/carl@x.org/", "b'carl@x.org'",
])
def test_every_written_form_of_a_value_is_scrubbed(log_lines: io.StringIO, form: str) -> None:
    with logs.redact_values(["carl@x.org"]):
        logging.getLogger("somelib").warning("GET /v1/x?email=%s HTTP/1.1", form)
        logs.get_logger("lethe.test").info("event", detail={"to": form}, url=f"http://h/?q={form}")
    text = log_lines.getvalue()
    assert "carl" not in text.lower() and "%40x" not in text.lower(), text
    assert len(rendered(log_lines)) == 2


def test_scrub_keeps_ids_that_merely_contain_the_value() -> None:
    assert logs.scrub("task 3ef3e4912b-77, users/12/a, 12%2F", ["12"]) == \
        f"task 3ef3e4912b-77, users/{logs.REDACTED}/a, {logs.REDACTED}%2F"
    assert logs.mentions("Case of CARL%40x.org", ["carl@x.org"])
    assert not logs.mentions("case 2026-17", ["12"])


_value = st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs")), min_size=1, max_size=30)


@settings(max_examples=400, deadline=None)
@given(value=_value, pick=st.integers(min_value=0), upper=st.booleans())
def test_any_written_form_standing_alone_is_scrubbed(value: str, pick: int, upper: bool) -> None:
    forms = sorted(logs.written_forms(value))
    form = forms[pick % len(forms)]
    if upper and form.upper().lower() == form.lower():
        form = form.upper()
    assert logs.scrub(f" {form} ", [value]) == f" {logs.REDACTED} "  # no form holds a space (no Zs values)
    assert logs.mentions(f"reason: {form}", [value])


@settings(max_examples=300, deadline=None)
@given(value=_value, fields=st.dictionaries(st.text(max_size=8), st.text(max_size=40), max_size=4))
def test_a_scrubbed_line_stays_json(value: str, fields: dict[str, str]) -> None:
    line = json.dumps({**fields, "event": f"saw {value}"})
    with logs.redact_values([value]):
        scrubbed = json.loads(logs._scrub_rendered(None, "info", line))
    assert any(v.endswith(logs.REDACTED) for v in scrubbed.values())  # valid JSON still; keys scrubbed too


def test_decomposed_and_escaped_forms_are_scrubbed() -> None:
    """NFD text, a bytes repr and an ascii() repr of a value with accents; a long value glued to letters;
    a short id glued to letters stays (a name like avatar4711.png, see docs/decisions.md)."""
    value = "josé@exämple.com"
    line = (f"a {unicodedata.normalize('NFD', value)} b {('users/' + value).encode()!r} c {value!a} "
            f"d {unicodedata.normalize('NFD', value)!a} e {unicodedata.normalize('NFD', value).encode()!r}")
    assert logs.scrub(line, [value]) == (f"a {logs.REDACTED} b b'users/{logs.REDACTED}' c '{logs.REDACTED}' "
                                         f"d '{logs.REDACTED}' e b'{logs.REDACTED}'")
    assert logs.mentions(line, [value])
    assert logs.scrub("users/avatar123456.png", ["123456"]) == f"users/avatar{logs.REDACTED}.png"
    assert logs.scrub("users/avatar4711.png", ["4711"]) == "users/avatar4711.png"


_around = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(value=_value, before=_around, after=_around)
def test_decomposed_text_loses_the_value_and_keeps_the_rest(value: str, before: str, after: str) -> None:
    """The text is NFC-normalised for the search only: in NFD text the value goes, and every other character
    stays where it was, as it was."""
    assume(not logs.mentions(before, [value]) and not logs.mentions(after, [value]))
    nfd = unicodedata.normalize("NFD", f"{before} {value} {after}")
    assert nfd.startswith(unicodedata.normalize("NFD", before) + " ")  # a space ends any combining run
    assert logs.scrub(nfd, [value]) == (f"{unicodedata.normalize('NFD', before)} {logs.REDACTED} "
                                        f"{unicodedata.normalize('NFD', after)}")


@settings(max_examples=300, deadline=None)
@given(value=_value)
def test_bytes_and_ascii_reprs_lose_the_value(value: str) -> None:
    """A value logged inside bytes (a boto key) or through ascii() is scrubbed: no escaped form survives."""
    assume(not logs.mentions(f"{logs.REDACTED} key=b'users/' name='' glued=77", [value]))
    scrubbed = logs.scrub(f"key={('users/' + value).encode()!r} name={value!a} glued=7{value}7", [value])
    assert not logs.mentions(scrubbed, [value]), scrubbed
    assert scrubbed.count(logs.REDACTED) == 2 + (not logs._bounded(value))  # a short id stays glued


integration = pytest.mark.integration  # the ledger on SQLite and PostgreSQL


@integration
@pytest.mark.parametrize("reason", [
    f"litigation hold for {EMAIL}", f"LITIGATION HOLD {EMAIL.upper()}", f"see ?q={quote(EMAIL, safe='')}",
])
def test_a_hold_reason_naming_the_subject_is_refused(ledger: Ledger, reason: str) -> None:
    """The reason would stay in the audit chain for good: refused, nothing recorded."""
    parsed = subject()
    hashes = list(parsed.hashes(ledger.subject_key).values())
    with pytest.raises(InvalidInput, match="contains the subject's identifier"):
        ledger.add_hold(hashes, reason, subject=parsed)
    assert ledger.list_holds() == []
    ledger.add_hold(hashes, "litigation hold, case 2026-17", subject=parsed)
    with ledger.sessions() as s:
        details = json.dumps([e.detail for e in s.scalars(select(AuditEntry))])
    assert "carl" not in details.lower()


@integration
def test_an_extension_reason_naming_the_subject_is_refused(ledger: Ledger) -> None:
    request_id, _, _ = file_request(ledger, DATAMAP, subject())
    with pytest.raises(InvalidInput, match="contains the subject's identifier"):
        ledger.extend_deadline(request_id, f"complex request of {EMAIL.upper()}")
    with pytest.raises(LedgerError, match="needs a reason"):
        ledger.extend_deadline(request_id, "  ")
    ledger.extend_deadline(request_id, "complex request")
    assert not any("carl" in json.dumps(e["detail"]).lower() for e in ledger.audit_trail(request_id))


@integration
def test_cli_refuses_reasons_naming_the_subject(tmp_path: Path, signing_key_file: Path) -> None:
    """`lethe hold add` and `lethe extend` with the subject's value in the reason: exit 2, one line that
    does not repeat the value, nothing recorded."""
    import subprocess
    import sys

    from tests.fixtures.lethe import SUBJECT_KEY

    (tmp_path / "map.yaml").write_text(MAP)
    env = {**os.environ, "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'lethe.db'}",
           "LETHE_DATA_MAP": str(tmp_path / "map.yaml"), "LETHE_SUBJECT_KEY": SUBJECT_KEY,
           "LETHE_SIGNING_KEY": str(signing_key_file)}
    env.pop("LETHE_BROKER_URL", None)
    lethe = str(Path(sys.executable).with_name("lethe"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([lethe, *args], env=env, capture_output=True, text=True, timeout=120)

    held = run("hold", "add", "--subject", f"email={EMAIL}", "--reason", f"lawsuit by {EMAIL.upper()}")
    assert held.returncode == 2 and "identifier" in held.stderr and "Traceback" not in held.stderr, held.stderr
    assert EMAIL not in held.stderr.lower() and len(held.stderr.strip().splitlines()) == 1
    assert json.loads(run("hold", "list", "--json").stdout)["items"] == []

    ledger = Ledger(env["LETHE_DATABASE_URL"], bytes.fromhex(SUBJECT_KEY), load_private_key(signing_key_file))
    request_id, _, _ = file_request(ledger, DATAMAP, subject())
    ledger.engine.dispose()
    extended = run("extend", request_id, "--reason", f"complex: {quote(EMAIL)}")
    assert extended.returncode == 2 and "Traceback" not in extended.stderr, extended.stderr
    assert run("status", request_id, "--json").returncode == 0
