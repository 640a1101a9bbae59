"""kind: sql beyond the contract: hostile values, type conversion, masking, foreign keys, interrupted
purges, vacuum levels, the probe and the map's checks, on real PostgreSQL and SQLite."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, Integer, String, create_engine, text

from orchestrator.datamap import DataMap, DataMapError
from orchestrator.identifiers import Subject
from tests.contract.base import Beats, subject
from tests.fixtures.services import temporary_mariadb
from workers.targets.base import PermanentError, SliceExpired, build_target
from workers.targets.probes import probe_map, probe_target
from workers.targets.selectors import dispose_engine
from workers.targets.sql import SqlConfig, SqlTarget
from workers.targets.sql_types import convert

pytestmark = pytest.mark.integration

SCHEMA = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, handle VARCHAR(64), email VARCHAR(200), "
    "display_name VARCHAR(64) NOT NULL)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, "
    "CONSTRAINT fk_orders_user FOREIGN KEY (user_id) REFERENCES users (id))",
    "CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users (id) ON DELETE CASCADE)",
]
HANDLES = {1: "12", 2: "123", 3: "1 OR 1=1", 4: "'; DROP TABLE users; --", 5: "1234"}


@pytest.fixture(params=["postgresql", "sqlite", "mariadb"])
def app_db(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """An application database: users (id, handle, email, display_name), orders referencing users by a
    named foreign key, sessions referencing it ON DELETE CASCADE."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("pg_database" if request.param == "postgresql" else "mariadb_database")
    db = create_engine(url)
    with db.begin() as conn:
        for statement in SCHEMA:
            conn.execute(text(statement))
        conn.execute(text("INSERT INTO users VALUES (:i, :h, :e, :d)"),
                     [{"i": i, "h": h, "e": f"user{i}@example.org", "d": f"User {i}"} for i, h in HANDLES.items()])
    db.dispose()
    yield url
    dispose_engine(url)


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    with temporary_mariadb() as url:
        yield url
        dispose_engine(url)


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    db = create_engine(url)
    try:
        with db.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        db.dispose()


def run(url: str, *statements: str) -> None:
    db = create_engine(url)
    with db.begin() as conn:
        if url.startswith("sqlite"):
            conn.execute(text("PRAGMA foreign_keys = ON"))
        for statement in statements:
            conn.execute(text(statement))
    db.dispose()


def target(url: str, **config: object) -> SqlTarget:
    fields: dict[str, object] = {"name": "app-users", "kind": "sql", "url": url, "table": "users",
                                 "where": {"id": "{user_id}"}, **config}
    built = build_target(SqlConfig.model_validate(fields))
    assert isinstance(built, SqlTarget)
    return built


def handle(value: str) -> Subject:
    return Subject.parse({"handle": value}, {"handle": None})


@pytest.mark.parametrize("value", ["1 OR 1=1", "'; DROP TABLE users; --"])
def test_injection_attempts_in_values_are_only_ever_literals(app_db: str, value: str) -> None:
    """A value shaped like SQL matches exactly the row holding that text: every other row stays, and the
    table is still there."""
    t = target(app_db, where={"handle": "{handle}"})
    assert t.count(handle(value)) == 1
    assert t.purge(handle(value), Beats()) == 1
    left = {h for (h,) in rows(app_db, "SELECT handle FROM users")}
    assert left == set(HANDLES.values()) - {value}


@pytest.mark.parametrize("value", ["1 OR 1=1", "012", "+12", "12.0", "-0x1", "99999999999999999999"])
def test_a_value_that_does_not_convert_fails_the_task_and_deletes_nothing(app_db: str, value: str) -> None:
    """An integer column takes canonical decimal integers within its range; anything else is a permanent
    error naming the column, never a silent zero, and nothing is deleted."""
    t = target(app_db)
    for call in (t.count, lambda s: t.purge(s, Beats())):
        with pytest.raises(PermanentError, match="column id: a value cannot be converted") as refused:
            call(subject(value))
        assert value not in str(refused.value)
    assert len(rows(app_db, "SELECT id FROM users")) == len(HANDLES)


def test_look_alike_ids_in_a_text_column(app_db: str) -> None:
    """Handle 12 is erased; 123 and 1234 (which start with it) stay."""
    t = target(app_db, where={"handle": "{handle}"})
    assert t.purge(handle("12"), Beats()) == 1
    assert {h for (h,) in rows(app_db, "SELECT handle FROM users")} == set(HANDLES.values()) - {"12"}


def test_mask_overwrites_only_the_masked_columns_of_the_subject(app_db: str) -> None:
    """action: mask sets the mask's columns on the subject's row, leaves its other columns, and touches no
    other row; a second purge changes nothing and verify reads 0."""
    t = target(app_db, action="mask", mask={"email": None, "display_name": "erased"})
    assert t.count(subject("1")) == 1
    assert t.purge(subject("1"), Beats()) == 1
    assert t.verify(subject("1")) == 0 and t.purge(subject("1"), Beats()) == 0
    by_id = {i: (h, e, d) for i, h, e, d in rows(app_db, "SELECT id, handle, email, display_name FROM users")}
    assert by_id[1] == ("12", None, "erased")
    assert all(by_id[i] == (HANDLES[i], f"user{i}@example.org", f"User {i}") for i in HANDLES if i != 1)


def test_an_integer_beyond_postgresql_integer_range_fails(app_db: str) -> None:
    """PostgreSQL's INTEGER is 32 bits: a larger id fails the task instead of a database error retried."""
    if app_db.startswith("sqlite"):
        assert target(app_db).count(subject("99999999999")) == 0  # SQLite's INTEGER holds 64 bits
        return
    with pytest.raises(PermanentError, match="cannot be converted"):
        target(app_db).count(subject("99999999999"))


def test_mask_null_into_a_not_null_column_fails_permanently(app_db: str) -> None:
    t = target(app_db, action="mask", mask={"display_name": None})
    with pytest.raises(PermanentError, match="display_name is NOT NULL"):
        t.purge(subject("1"), Beats())
    assert rows(app_db, "SELECT display_name FROM users WHERE id = 1") == [("User 1",)]


def test_a_foreign_key_refusal_fails_permanently_naming_the_constraint(app_db: str) -> None:
    """A delete an orders row still references fails the task (PermanentError, not retried) naming
    fk_orders_user, never the subject's value; the user's row is still there."""
    run(app_db, "INSERT INTO orders VALUES (10, 1)")
    t = target(app_db)
    with pytest.raises(PermanentError, match="fk_orders_user") as refused:
        t.purge(subject("1"), Beats())
    assert "(1)" not in str(refused.value) and "users" in str(refused.value)
    assert rows(app_db, "SELECT count(*) FROM users WHERE id = 1") == [(1,)]


def test_a_mask_refused_by_a_unique_constraint_is_not_called_a_foreign_key(app_db: str) -> None:
    """Masking two rows to the same value of a UNIQUE column fails permanently, saying a constraint
    refused it (not sending the operator to order foreign keys); the rows keep their values."""
    run(app_db, "CREATE UNIQUE INDEX users_handle_unique ON users (handle)",
        "INSERT INTO users VALUES (20, 'dup-a', 'same@example.org', 'Dup'), (21, 'dup-b', 'same@example.org', 'Dup')")
    t = target(app_db, where={"email": "{email}"}, action="mask", mask={"handle": "erased"})
    with pytest.raises(PermanentError, match="refused by constraint") as refused:
        t.purge(Subject.parse({"email": "same@example.org"}, {"email": None}), Beats())
    assert "foreign key" not in str(refused.value) and "same@example.org" not in str(refused.value)
    assert sorted(h for (h,) in rows(app_db, "SELECT handle FROM users WHERE id IN (20, 21)")) == ["dup-a", "dup-b"]


def test_an_interrupted_purge_resumes_where_it_stopped(app_db: str) -> None:
    """Batches commit one by one: a purge stopped after its first batch (the slice expired, or the worker
    died) keeps what it deleted, and the next purge finishes the rest; nobody else's rows go."""
    run(app_db, *(f"INSERT INTO users VALUES ({100 + n}, 'bulk', 'b{n}@example.org', 'Bulk')" for n in range(7)))
    t = target(app_db, where={"handle": "{handle}"}, batch_size=3)

    def expire(done: int | None = None) -> None:
        raise SliceExpired(done or 0)

    with pytest.raises(SliceExpired) as expired:
        t.purge(handle("bulk"), expire)
    assert expired.value.done == 3 and t.count(handle("bulk")) == 4

    def killed(done: int | None = None) -> None:
        raise KeyboardInterrupt  # the worker process is going away mid-purge

    with pytest.raises(KeyboardInterrupt):
        target(app_db, where={"handle": "{handle}"}, batch_size=3).purge(handle("bulk"), killed)
    assert t.count(handle("bulk")) == 1
    beats = Beats()
    assert t.purge(handle("bulk"), beats) == 1 and beats.calls >= 1
    assert t.verify(handle("bulk")) == 0
    assert {h for (h,) in rows(app_db, "SELECT handle FROM users")} == set(HANDLES.values())


KILLED_WORKER = """
import os, sys
from orchestrator.identifiers import Subject
from workers.targets.sql import SqlConfig, SqlTarget

target = SqlTarget(SqlConfig.model_validate_json(sys.argv[1]))
target.purge(Subject({"handle": "bulk"}), lambda done=None: os.kill(os.getpid(), 9))  # killed after batch 1
"""


def test_a_worker_killed_mid_purge_keeps_its_whole_batches(app_db: str) -> None:
    """A worker process killed (SIGKILL) right after its first batch: that batch stays deleted, nothing
    else is touched, and a purge in a new process finishes the rest."""
    run(app_db, *(f"INSERT INTO users VALUES ({100 + n}, 'bulk', 'b{n}@example.org', 'Bulk')" for n in range(7)))
    config = SqlConfig.model_validate({"name": "app-users", "kind": "sql", "url": app_db, "table": "users",
                                       "where": {"handle": "{handle}"}, "batch_size": 3})
    worker = subprocess.run([sys.executable, "-c", KILLED_WORKER, config.model_dump_json()],
                            cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert worker.returncode == -signal.SIGKILL
    t = SqlTarget(config)
    assert t.count(handle("bulk")) == 4
    assert t.purge(handle("bulk"), Beats()) == 4 and t.verify(handle("bulk")) == 0
    assert {h for (h,) in rows(app_db, "SELECT handle FROM users")} == set(HANDLES.values())


def test_levels_say_how_far_the_delete_went(app_db: str) -> None:
    """PostgreSQL: a plain purge leaves dead tuples (invisible); vacuum: true removes them (unindexed);
    vacuum: full rewrites the table (bytes_reclaimed). MariaDB: OPTIMIZE TABLE (unindexed, InnoDB's undo
    log aside). SQLite: secure_delete and a WAL checkpoint."""
    if app_db.startswith("sqlite"):
        t = target(app_db)
        t.purge(subject("1"), Beats())
        assert t.level == "bytes_reclaimed"
        return
    plain, vacuumed, full = target(app_db), target(app_db, vacuum=True), target(app_db, vacuum="full")
    plain.purge(subject("1"), Beats())
    assert plain.level == "invisible"
    vacuumed.purge(subject("2"), Beats())
    assert vacuumed.level == "unindexed"
    full.purge(subject("3"), Beats())
    assert full.level == ("unindexed" if app_db.startswith("mysql") else "bytes_reclaimed")
    assert {i for (i,) in rows(app_db, "SELECT id FROM users")} == {4, 5}


def test_missing_table_and_columns_are_named(app_db: str) -> None:
    with pytest.raises(PermanentError, match="table nowhere does not exist"):
        target(app_db, table="nowhere").count(subject("1"))
    with pytest.raises(PermanentError, match="has no column owner, nickname"):
        target(app_db, where={"owner": "{user_id}"}, action="mask", mask={"nickname": "x"}).count(subject("1"))


def test_probe_reports_referencing_tables_no_earlier_target_erases(app_db: str) -> None:
    """orders references users with no target before it: reported (the delete would be refused).
    sessions cascades: reported as uncounted. With an orders target earlier, only the cascade remains."""
    users = SqlConfig.model_validate({"name": "app-users", "kind": "sql", "url": app_db, "table": "users",
                                      "where": {"id": "{user_id}"}})
    problems = probe_target(users, [])
    assert any("orders references users by foreign key" in p and "fk_orders_user" in p for p in problems), problems
    assert any("sessions references users with ON DELETE CASCADE" in p for p in problems), problems
    orders = SqlConfig.model_validate({"name": "app-orders", "kind": "sql", "url": app_db, "table": "orders",
                                       "where": {"user_id": "{user_id}"}})
    problems = probe_target(users, [orders])
    assert len(problems) == 1 and "CASCADE" in problems[0]
    assert probe_target(orders, []) == []
    masked = users.model_copy(update={"action": "mask", "mask": {"email": None}})
    assert probe_target(masked, []) == []
    missing = users.model_copy(update={"table": "nowhere"})
    assert probe_target(missing, []) == ["sql target app-users: table nowhere does not exist"]
    not_null = users.model_copy(update={"action": "mask", "mask": {"display_name": None}})
    assert probe_target(not_null, []) == ["sql target app-users: column display_name is NOT NULL: it cannot be "
                                          "set to null"]


def test_probe_map_counts_targets_ordered_before_transitively(app_db: str) -> None:
    """A map's probe gives each target the targets it waits for, through after chains: orders erased two
    steps earlier covers users' foreign key; only the cascade into sessions is reported."""
    def sql(name: str, table: str, column: str, after: list[str]) -> SqlConfig:
        return SqlConfig.model_validate({"name": name, "kind": "sql", "url": app_db, "table": table,
                                         "where": {column: "{user_id}"}, "after": after})

    chain = [sql("app-orders", "orders", "user_id", []), sql("middle", "orders", "id", ["app-orders"]),
             sql("app-users", "users", "id", ["middle"])]
    problems = probe_map(chain)
    assert [name for name, _ in problems] == ["app-users"] and "CASCADE" in problems[0][1]
    unordered = probe_map([sql("app-orders", "orders", "user_id", []), sql("app-users", "users", "id", [])])
    assert any(name == "app-users" and "fk_orders_user" in p for name, p in unordered)


def test_probe_reports_an_unreachable_database() -> None:
    config = SqlConfig.model_validate({"name": "gone", "kind": "sql", "table": "users", "where": {"id": "{user_id}"},
                                       "url": "postgresql://nobody@127.0.0.1:1/none"})
    (problem,) = probe_target(config, [])
    assert problem.startswith("cannot reach the database") and "nobody" not in problem


MAP = """
version: 1
identifiers: [user_id]
targets:
  - name: app-users
    kind: sql
    url: "sqlite:///app.db"
    table: {table}
    where: {where}
    {extra}
"""


@pytest.mark.parametrize("table,where,extra,error", [
    ("users", '{id: "12"}', "", "where must hold an {identifier} placeholder"),
    ("users", "{}", "", "where must name at least one column"),
    ("users", '{"id; drop": "{user_id}"}', "", "is not a plain column name"),
    ("public.users; --", '{id: "{user_id}"}', "", "table must be a plain name or schema.name"),
    ("a.b.c", '{id: "{user_id}"}', "", "table must be a plain name or schema.name"),
    ("users", '{id: "{user_id}"}', "mask: {email: null}", "mask applies to action: mask only"),
    ("users", '{id: "{user_id}"}', "action: mask", "action: mask needs mask"),
    ("users", '{id: "{user_id}"}', 'action: mask\n    mask: {note: "was {user_id}"}', "no {identifier} placeholders"),
    ("users", '{id: "{user_id}"}', "action: mask\n    mask: {tags: [a]}", "must be a string, number, boolean or null"),
    ("users", '{id: "{user_id}"}', "action: drop", "action"),
    ("users", '{id: "{tenant}"}', "", "undeclared identifiers: tenant"),
])
def test_the_map_refuses_unsafe_sql_targets_when_it_loads(table: str, where: str, extra: str, error: str) -> None:
    """Everything checkable without a connection is checked when the map loads (columns are checked when
    the table is first reflected: by the probe or the first task)."""
    with pytest.raises(DataMapError) as refused:
        DataMap.parse(MAP.format(table=table, where=where, extra=extra))
    assert error in str(refused.value)


def test_a_valid_sql_target_loads_with_its_identifiers() -> None:
    dm = DataMap.parse(MAP.format(table="public.users", where='{id: "{user_id}"}',
                                  extra='action: mask\n    mask: {email: null, display_name: erased}'))
    config = dm.target("app-users")
    assert isinstance(config, SqlConfig) and config.required_identifiers() == {"user_id"}
    assert config.schema_and_name == ("public", "users")


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=30) | st.integers().map(str) | st.booleans())
def test_conversion_is_exact_or_refused(dialect: str, value: object) -> None:
    """Any value bound into a sql statement is converted losslessly to the column's type or refused with
    PermanentError: an integer column never receives a silent zero, a rounded or a wrapped-around number."""
    columns = {"int": Column("n", Integer), "big": Column("b", BigInteger), "text": Column("t", String(8))}
    for kind, column in columns.items():
        try:
            converted = convert(column, value, f"column {column.name}", dialect)
        except PermanentError as exc:  # the message names the column and its type, never the value
            assert str(exc) == f"column {column.name}: a value cannot be converted to {column.type}"
            continue
        if kind == "text":
            assert converted == value and len(str(converted)) <= 8
        else:
            bits = 64 if kind == "big" or dialect == "sqlite" else 32
            assert isinstance(converted, int) and str(converted) == value
            assert -(2 ** (bits - 1)) <= converted < 2 ** (bits - 1)
