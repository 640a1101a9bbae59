"""Every datetime is UTC before it is stored, on SQLite and PostgreSQL; outside times have one parser."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger
from orchestrator.ledger.models import Hold
from orchestrator.times import InvalidTime, parse_time, to_utc
from tests.fixtures.lethe import SUBJECT_KEY, file_request

MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
"""
DATAMAP = DataMap.parse(MAP)
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_users = itertools.count(1000)


@pytest.mark.integration
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=OFFSETS, ahead=st.integers(min_value=60, max_value=7 * 24 * 3600))
def test_a_hold_until_in_any_offset_is_the_same_instant(ledger: Ledger, offset: timezone, ahead: int) -> None:
    """A hold ending `ahead` seconds from now, written in any UTC offset, reads back as that instant in
    UTC and holds the subject's request (on SQLite it used to keep the wall clock and end hours early)."""
    user = str(next(_users))
    until = (datetime.now(UTC) + timedelta(seconds=ahead)).astimezone(offset)
    parsed = DATAMAP.parse_subject({"user_id": user})
    ledger.add_hold(parsed.hashes(ledger.subject_key).values(), "litigation hold", until=until)
    with ledger.sessions() as s:
        stored = s.scalars(select(Hold.until).order_by(Hold.id.desc()).limit(1)).one()
    assert stored is not None and stored.utcoffset() == timedelta(0) and stored == until
    request_id, _, dispatches = file_request(ledger, DATAMAP, parsed)
    assert dispatches == [] and ledger.status(request_id)["status"] == "on_hold"
    assert ledger.resume_expired_holds() == []


@pytest.mark.integration
def test_sqlite_stores_utc_digits(tmp_path: Path, subject_key: bytes, signing_key) -> None:  # type: ignore[no-untyped-def]
    """What SQLite keeps (and compares in SQL) is the UTC wall clock, whatever offset was given."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", subject_key, signing_key)
    until = datetime(2030, 1, 2, 15, 36, 5, tzinfo=timezone(timedelta(hours=-8)))
    ledger.add_hold(["ab" * 32], "litigation hold", until=until)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT until FROM holds")).scalar_one().startswith("2030-01-02 23:36:05")
    ledger.engine.dispose()


@given(offset=OFFSETS, moment=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30)))
def test_parse_time_gives_the_instant_in_utc(offset: timezone, moment: datetime) -> None:
    value = moment.replace(tzinfo=offset)
    parsed = parse_time(value.isoformat())
    assert parsed == value and parsed.tzinfo is UTC


@given(st.text(max_size=40))
def test_parse_time_accepts_or_refuses_clearly(raw: str) -> None:
    """Whatever the text, the parser returns a UTC time or raises InvalidTime: never another error."""
    try:
        parsed = parse_time(raw)
    except InvalidTime:
        return
    assert parsed.tzinfo is UTC


def test_times_beyond_utc_range_are_refused() -> None:
    with pytest.raises(InvalidTime, match="out of range"):
        parse_time("9999-12-31T23:59:59-14:00")
    with pytest.raises(InvalidTime):
        parse_time("tomorrow")
    assert parse_time("2026-12-02") == datetime(2026, 12, 2, tzinfo=UTC)  # no offset: UTC
    assert to_utc(datetime(2026, 12, 2, 10, tzinfo=timezone(timedelta(hours=2)))).hour == 8


LETHE = str(Path(sys.executable).with_name("lethe"))


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cli_hold_until_with_an_offset(backend: str, tmp_path: Path, write_map, signing_key_file: Path,  # type: ignore[no-untyped-def]
                                       request: pytest.FixtureRequest) -> None:
    """`lethe hold add --until` takes an offset and stores the instant in UTC; a time past the UTC range
    is exit 2 with one line, no traceback."""
    url = f"sqlite:///{tmp_path / 'lethe.db'}" if backend == "sqlite" else \
        str(request.getfixturevalue("pg_database")).replace("postgresql+psycopg://", "postgresql://")
    env = {**os.environ, "LETHE_DATABASE_URL": url, "LETHE_DATA_MAP": str(write_map(MAP)),
           "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(signing_key_file)}
    env.pop("LETHE_BROKER_URL", None)

    def lethe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LETHE, *args], env=env, capture_output=True, text=True, timeout=120)

    far = lethe("hold", "add", "--subject", "user_id=12", "--reason", "r", "--until", "9999-12-31T23:59:59-14:00")
    assert far.returncode == 2 and "out of range" in far.stderr and "Traceback" not in far.stderr, far.stderr
    assert len(far.stderr.strip().splitlines()) == 1
    until = (datetime.now(UTC) + timedelta(hours=2)).astimezone(timezone(timedelta(hours=-8))).replace(microsecond=0)
    placed = lethe("hold", "add", "--subject", "user_id=12", "--reason", "litigation", "--until", until.isoformat())
    assert placed.returncode == 0, placed.stderr
    listed = lethe("hold", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    holds = json.loads(listed.stdout)["items"]
    assert [datetime.fromisoformat(h["until"]) for h in holds] == [until] and holds[0]["active"]
    assert holds[0]["until"].endswith("Z")


@pytest.mark.integration
def test_a_cursor_past_the_utc_range_is_a_clear_error(ledger: Ledger) -> None:
    """A forged list cursor is an outside time too: past the UTC range it is "bad cursor", not a 500."""
    import base64

    from orchestrator.ledger import LedgerError

    raw = b"9999-12-31T23:59:59-14:00|00000000-0000-0000-0000-000000000000"
    with pytest.raises(LedgerError, match="bad cursor"):
        ledger.list_requests(cursor=base64.urlsafe_b64encode(raw).decode())
