"""A sql target binds only a value's canonical spelling (workers/targets/sql_types.py): a hold or request
is recorded by the keyed hash of one spelling, so another spelling of the same value (uppercase,
dashless or urn: UUIDs, 1.50 for 1.5, a date with a time, -0) must never select the held row."""

from __future__ import annotations

import contextlib
import uuid
from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Date, DateTime, Float, Integer, Numeric, Uuid, create_engine, text

from orchestrator.identifiers import Subject
from tests.contract.base import Beats
from workers.targets.base import PermanentError, build_target
from workers.targets.selectors import dispose_engine
from workers.targets.sql import SqlConfig, SqlTarget
from workers.targets.sql_types import canonical_decimal, convert

HELD = "2f1c6a52-8d4e-4b7a-9c3d-5e6f7a8b9c0d"
COLUMNS = {"uuid": Column("u", Uuid), "numeric": Column("n", Numeric(12, 4)), "float": Column("f", Float),
           "date": Column("d", Date), "datetime": Column("t", DateTime), "int": Column("i", Integer)}


def render(kind: str, converted: object) -> str:
    """The canonical text of a converted value: the one spelling that may select it."""
    if kind in ("numeric", "float"):
        assert isinstance(converted, Decimal | float)
        return canonical_decimal(converted)
    if isinstance(converted, date | datetime):
        return converted.isoformat()
    return str(converted)


@pytest.mark.parametrize(("kind", "value"), [
    ("uuid", HELD.upper()), ("uuid", HELD.replace("-", "")), ("uuid", f"urn:uuid:{HELD}"), ("uuid", f"{{{HELD}}}"),
    ("numeric", "1.50"), ("numeric", "+1.5"), ("numeric", "1E+2"), ("numeric", "01.5"), ("numeric", "-0"),
    ("numeric", " 1.5"), ("float", "0.10000000000000001"), ("float", "1e2"), ("float", "-0"),
    ("date", "20240101"), ("date", "2024-01-01T00:00"), ("datetime", "2024-01-01 00:00:00"),
    ("int", "-0"), ("int", "012"), ("int", "+12"),
])
def test_another_spelling_of_a_value_is_refused(kind: str, value: str) -> None:
    with pytest.raises(PermanentError):
        convert(COLUMNS[kind], value, "column", "postgresql")


@pytest.mark.parametrize(("kind", "value"), [
    ("uuid", HELD), ("numeric", "1.5"), ("numeric", "-0.25"), ("numeric", "100"), ("numeric", "0"),
    ("float", "0.1"), ("float", "100"), ("date", "2024-01-01"), ("datetime", "2024-01-01T00:00:00"), ("int", "0"),
])
def test_the_canonical_spelling_converts(kind: str, value: str) -> None:
    assert render(kind, convert(COLUMNS[kind], value, "column", "postgresql")) == value


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(COLUMNS)), value=st.one_of(
    st.text(max_size=40), st.uuids().map(str), st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: str(u).upper()),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str), st.floats(allow_nan=False).map(str),
    st.integers().map(str), st.dates().map(str), st.dates().map(lambda d: d.strftime("%Y%m%d")),
    st.datetimes().map(str), st.datetimes().map(datetime.isoformat), st.sampled_from(["-0", "-0.0", "0.0", "1e3"])))
def test_a_value_converts_iff_it_is_its_own_canonical_form(kind: str, value: str) -> None:
    try:
        converted = convert(COLUMNS[kind], value, "column", "postgresql")
    except PermanentError:
        with contextlib.suppress(ValueError, ArithmeticError):  # refused: what it spells prints differently
            assert _spelled(kind, value) != value
        return
    assert render(kind, converted) == value


def _spelled(kind: str, value: str) -> str:
    if kind == "uuid":
        return str(uuid.UUID(value))
    if kind in ("numeric", "float"):
        number = Decimal(value)
        if not number.is_finite():
            raise ValueError
        return canonical_decimal(float(number) if kind == "float" else number)
    if kind == "date":
        return date.fromisoformat(value).isoformat()
    if kind == "datetime":
        return datetime.fromisoformat(value).isoformat()
    integer = int(value)
    if not -(2**31) <= integer < 2**31:
        raise OverflowError  # refused for its range, not its spelling
    return str(integer)


@pytest.fixture
def uuid_db(pg_database: str) -> str:
    """PostgreSQL's UUID column (SQLite reflects no UUID type: its column is text, compared as spelled)."""
    db = create_engine(pg_database)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE people (id INTEGER PRIMARY KEY, ref UUID NOT NULL)"))
        conn.execute(text("INSERT INTO people VALUES (1, :a), (2, :b)"), {"a": HELD, "b": str(uuid.UUID(int=2))})
    db.dispose()
    return pg_database


@pytest.mark.integration
@pytest.mark.parametrize("spelling", [HELD.upper(), HELD.replace("-", ""), f"urn:uuid:{HELD}"])
def test_a_held_uuid_in_another_spelling_purges_nothing(uuid_db: str, spelling: str) -> None:
    """The held row's UUID spelled otherwise fails the task: nothing counted, nothing purged; the held
    spelling itself still selects exactly its row."""
    built = build_target(SqlConfig.model_validate({"name": "people", "kind": "sql", "url": uuid_db, "table": "people",
                                                   "where": {"ref": "{ref}"}}))
    assert isinstance(built, SqlTarget)
    other = Subject.parse({"ref": spelling}, {"ref": None})
    try:
        with pytest.raises(PermanentError, match="column ref"):
            built.count(other)
        with pytest.raises(PermanentError, match="column ref"):
            built.purge(other, Beats())
        db = create_engine(uuid_db)
        with db.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM people")).scalar() == 2
        db.dispose()
        assert built.count(Subject.parse({"ref": HELD}, {"ref": None})) == 1
    finally:
        built.engine.dispose()
        dispose_engine(uuid_db)
