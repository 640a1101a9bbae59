"""The read-only SQL checker (keys_query, ids_query, identities): what it refuses and why, a property over
generated statements executed on SQLite, and the attacks and the statement timeout on real PostgreSQL."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from orchestrator.datamap import DataMap, DataMapError
from tests.contract.base import subject
from workers.targets.base import RetryableError
from workers.targets.selectors import KeysQuery, dispose_engine, engine
from workers.targets.sql_check import UnsafeQuery, check_read_query, dialect_of

ACCEPTED = [
    "SELECT k FROM t WHERE u = :user_id",
    "SELECT k FROM t WHERE u = :user_id OR e = :email",
    "SELECT id FROM users WHERE lower(email) = :email",
    "SELECT x::text FROM t WHERE u = :p AND n > 3 ORDER BY k LIMIT 10",
    "SELECT a.k FROM a JOIN b ON a.id = b.aid WHERE b.u = :p",
    "WITH x AS (SELECT * FROM t) SELECT k FROM x WHERE x.u = :p",
    "SELECT k FROM t WHERE u = :p UNION SELECT k FROM s WHERE v = :p",
    "SELECT k FROM t WHERE u = CAST(:p AS INTEGER)",
    "SELECT k FROM t WHERE id IN (SELECT id FROM s WHERE x = 1) AND u = :p",
    "SELECT k FROM t WHERE u = :p AND (v = 1 OR true)",
    "SELECT object_key FROM uploads WHERE owner_id = :user_id;",
]

REFUSED = {
    "or-true": ("SELECT k FROM t WHERE u = :user_id OR true", "could select every subject's rows"),
    "or-1=1": ("SELECT k FROM t WHERE u = :p OR 1=1", "could select every subject's rows"),
    "nested-or": ("SELECT k FROM t WHERE u = :p OR (v = :p OR true)", "could select every subject's rows"),
    "not": ("SELECT k FROM t WHERE NOT (u = :p)", "could select every subject's rows"),
    "param-equals-param": ("SELECT k FROM t WHERE :p = :p", "could select every subject's rows"),
    "coalesce-side": ("SELECT k FROM t WHERE coalesce(u, :p) = :p", "could select every subject's rows"),
    "union-unpinned": ("SELECT k FROM t WHERE u = :p UNION SELECT k FROM s", "could select every subject's rows"),
    "pg_read_file": ("SELECT pg_read_file(:p) FROM t WHERE u = :p", "calls pg_read_file()"),
    "pg_terminate_backend": ("SELECT pg_terminate_backend(pid) FROM t WHERE u = :p",
                             "calls pg_terminate_backend()"),
    "for-update": ("SELECT k FROM t WHERE u = :p FOR UPDATE", "uses LOCK"),
    "into": ("SELECT k INTO x FROM t WHERE u = :p", "uses INTO"),
    "table-function": ("SELECT g FROM generate_series(1, 2) g WHERE g = :p", "table function"),
    "system-catalog": ("SELECT rolname FROM pg_catalog.pg_authid WHERE rolname = :p", "system catalog"),
    "sqlite-master": ("SELECT sql FROM sqlite_master WHERE name = :p", "system catalog"),
    "cross-join": ("SELECT k FROM t, s WHERE t.u = :p", "cross join"),
    "join-on-true": ("SELECT k FROM t JOIN s ON true WHERE t.u = :p", "cross join"),
    "recursive": ("WITH RECURSIVE r AS (SELECT k FROM t WHERE u = :p UNION SELECT k FROM r WHERE k = :p) "
                  "SELECT k FROM r WHERE k = :p", "RECURSIVE"),
    "delete": ("DELETE FROM t WHERE u = :p", "must be a SELECT"),
    "delete-cte": ("WITH d AS (DELETE FROM t WHERE u = :p RETURNING k) SELECT k FROM d WHERE k = :p",
                   "must only read"),
    "two-statements": ("SELECT k FROM t WHERE u = :p; DELETE FROM t", "single statement"),
    "no-parameter": ("SELECT k FROM t", "needs a :kind parameter"),
    "qmark": ("SELECT k FROM t WHERE u = ?", "bound parameters only"),
    "pyformat": ("SELECT k FROM t WHERE u = %(p)s", "bound parameters only"),
    "format-placeholder": ("SELECT k FROM t WHERE u = '{user_id}'", "never {placeholders}"),
    "no-from": ("SELECT 1 WHERE 1 = :p", "FROM a table"),
    "not-sql": ("garbage (((", "not valid SQL"),
    "command": ("VACUUM", "must be a SELECT"),
    "server-function": ("SELECT version() FROM t WHERE u = :p", "not allowed"),
    # the security review's widenings: each returned every row for one subject
    "derived-table-parameter": ("SELECT id FROM (SELECT id, :email AS email FROM users) t WHERE t.email = :email",
                                "could select every subject's rows"),
    "cte-parameter": ("WITH t AS (SELECT id, :email AS email FROM users) SELECT id FROM t WHERE email = :email",
                      "could select every subject's rows"),
    "select-alias-in-where": ("SELECT id, :email AS e FROM users WHERE e = :email", "could select every subject's"),
    "derived-literal": ("SELECT id FROM (SELECT id, 'x' AS email FROM users) t WHERE t.email = :email",
                        "could select every subject's rows"),
    "self-equal-join": ("SELECT u.id FROM users u JOIN orders o ON o.id = o.id WHERE u.email = :email",
                        "column of two tables"),
    "unqualified-join": ("SELECT u.id FROM users u JOIN orders o ON id = user_id WHERE u.email = :email",
                         "column of two tables"),
    "lossy-cast-column": ("SELECT id FROM users WHERE CAST(email AS INTEGER) = :user_id",
                          "could select every subject's rows"),
    "parameter-in-select": ("SELECT id, :email FROM users WHERE email = :email", "only as column = :kind"),
    "parameter-in-in": ("SELECT id FROM users WHERE email = :email AND id IN (:email)", "only as column = :kind"),
    "executable-comment": ("SELECT id FROM users WHERE email = :email /*! OR 1=1 */", "holds a comment"),
    "executable-comment-tight": ("SELECT id FROM users WHERE email = :email /*!OR sleep(1)=0*/", "holds a comment"),
    "mariadb-comment": ("SELECT id FROM users WHERE email = :email /*M! OR 1=1 */", "holds a comment"),
    "line-comment": ("SELECT id FROM users WHERE email = :email -- mine", "holds a comment"),
}


@pytest.mark.parametrize("sql", ACCEPTED)
def test_plain_pinned_selects_are_accepted(sql: str) -> None:
    """Reads pinned to a bound identifier pass, with their parameters named."""
    assert check_read_query(sql, "postgres")


@pytest.mark.parametrize("sql,reason", REFUSED.values(), ids=list(REFUSED))
def test_unsafe_statements_are_refused_naming_the_problem(sql: str, reason: str) -> None:
    """Every statement that could write, call a server function or widen beyond the subject is refused,
    and the error names why."""
    with pytest.raises(UnsafeQuery) as refused:
        check_read_query(sql, "postgres", what="keys_query.sql")
    assert reason in str(refused.value) and str(refused.value).startswith("keys_query.sql")


def test_dialects_follow_the_url() -> None:
    """The parser reads the statement in the dialect of the database it runs on."""
    assert dialect_of("postgresql+psycopg://x@h/db") == "postgres"
    assert dialect_of("mysql+pymysql://x@h/db") == "mysql"
    assert dialect_of("sqlite:///a.db") == "sqlite"
    assert dialect_of("oracle://x@h/db") is None


def test_a_map_with_an_unpinned_keys_query_does_not_load() -> None:
    """The check runs when the map loads: ``… OR true`` is refused before anything runs."""
    with pytest.raises(DataMapError, match="could select every subject's rows"):
        DataMap.parse("""
version: 1
identifiers: [user_id]
targets:
  - {name: up, kind: s3, bucket: uploads,
     keys_query: {url: "sqlite://", sql: "SELECT k FROM t WHERE u = :user_id OR true"}}
""")


# -- property: whatever is accepted reads only the subject's rows ------------------------------------------
# Table t(u, k, n): every row's key k is its owner's id u, so a query that is pinned to :p returns only p.
PREDICATES = st.sampled_from([
    "u = :p", "lower(u) = lower(:p)", "trim(u) = :p", ":p = u", "n > 1", "true", "1 = 1", "u = 'a'",
    "k IS NOT NULL", "u <> :p", "u LIKE '%'", "n BETWEEN 0 AND 9", "u IN ('a', 'b')", "coalesce(u, :p) = :p",
    "u = :p OR true", "random() > 0", "u = upper(:p)", "CAST(n AS TEXT) = :p",
])
SUFFIXES = st.sampled_from([
    "", " ORDER BY k", " LIMIT 5", " UNION SELECT k FROM t", " UNION SELECT k FROM t WHERE u = :p",
    " FOR UPDATE", "; DELETE FROM t", " UNION SELECT name FROM sqlite_master WHERE name = :p",
])
HEADS = st.sampled_from([
    "SELECT k FROM t", "SELECT DISTINCT k FROM t", "SELECT t.k FROM t JOIN t AS o ON t.u = o.u",
    "SELECT t.k FROM t, t AS o", "SELECT k FROM (SELECT * FROM t) AS x", "SELECT upper(k) FROM t",
    "WITH x AS (SELECT * FROM t) SELECT k FROM x", "SELECT k FROM t AS w",
])


@st.composite
def where_clauses(draw: st.DrawFn, depth: int = 0) -> str:
    if depth >= 3 or draw(st.booleans()):
        return draw(PREDICATES)
    op = draw(st.sampled_from(["AND", "OR"]))
    left, right = draw(where_clauses(depth + 1)), draw(where_clauses(depth + 1))
    clause = f"{left} {op} {right}"
    return f"NOT ({clause})" if draw(st.integers(0, 9)) == 0 else f"({clause})"


@st.composite
def statements(draw: st.DrawFn) -> str:
    head, where, suffix = draw(HEADS), draw(where_clauses()), draw(SUFFIXES)
    if "JOIN" in head or ", t AS o" in head:  # two tables: qualify the columns
        where = re.sub(r"(?<![.:'\w])([ukn])\b", r"t.\1", where)
        suffix = suffix.replace("ORDER BY k", "ORDER BY t.k")
    return f"{head} WHERE {where}{suffix}"


@pytest.fixture(scope="module")
def owners_db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE t (u TEXT, k TEXT, n INTEGER)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(u, u, i) for i, u in enumerate(["a", "b", "12", "123", "x"])])
    db.execute("PRAGMA query_only = ON")
    return db


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=statements(), owner=st.sampled_from(["a", "12", "123", "nobody"]))
def test_accepted_statements_read_only_the_subject(owners_db: sqlite3.Connection, sql: str, owner: str) -> None:
    """A generated statement is either refused, or it reads, and every row it returns belongs to the
    subject bound to :p (run on SQLite, where each row's key is its owner)."""
    try:
        params = check_read_query(sql, "sqlite")
    except UnsafeQuery:
        return
    assert params == {"p"}
    rows = owners_db.execute(sql.replace(":p", "?"), [owner] * sql.count(":p")).fetchall()
    assert {str(k).lower() for (k,) in rows} <= {owner.lower()}, sql


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_refused_or_accepted_never_a_crash(sql: str) -> None:
    """Any text either passes or raises UnsafeQuery: the map loader never sees another exception."""
    with contextlib.suppress(UnsafeQuery):
        check_read_query(sql, "postgres")


# -- real PostgreSQL: the attacks, and the statement timeout ----------------------------------------------
@pytest.fixture
def uploads_db(pg_database: str):  # type: ignore[no-untyped-def]
    db = create_engine(pg_database)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE uploads (owner_id TEXT, object_key TEXT)"))
        conn.execute(text("INSERT INTO uploads VALUES ('12', 'a/12.jpg'), ('123', 'a/123.jpg'), ('7', 'a/7.jpg')"))
    yield pg_database, db
    db.dispose()
    dispose_engine(pg_database)


@pytest.mark.integration
@pytest.mark.parametrize("sql", [
    "SELECT object_key FROM uploads WHERE owner_id = :user_id OR true",
    "SELECT pg_read_file('/etc/hostname') FROM uploads WHERE owner_id = :user_id",
    "SELECT object_key FROM uploads WHERE owner_id = :user_id AND pg_terminate_backend(pg_backend_pid())",
], ids=["or-true", "pg_read_file", "pg_terminate_backend"])
def test_attacks_that_run_on_postgresql_are_refused_at_load(uploads_db, sql: str) -> None:  # type: ignore[no-untyped-def]
    """Each statement does its harm on the real server when run as given (the test's superuser reads
    another subject's keys or a server file), and the map's check refuses it before it could run."""
    url, db = uploads_db
    if "terminate" not in sql:  # that one would end the test's own session
        with db.connect() as conn:
            rows = conn.execute(text(sql), {"user_id": "12"}).fetchall()
        assert len(rows) >= 1 and rows != [("a/12.jpg",)]
    with pytest.raises(ValueError, match="sql"):
        KeysQuery(url=url, sql=sql)


@pytest.mark.integration
def test_statement_timeout_cancels_a_slow_keys_query(uploads_db) -> None:  # type: ignore[no-untyped-def]
    """A keys query blocked past its timeout (here by another session's lock) is cancelled by PostgreSQL
    and reported as a retryable error naming only the error's type."""
    url, db = uploads_db
    query = KeysQuery(url=url, sql="SELECT object_key FROM uploads WHERE owner_id = :user_id", timeout_seconds=0.5)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with db.begin() as conn:
            conn.execute(text("LOCK TABLE uploads IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        with pytest.raises(RetryableError, match="keys_query failed: QueryCanceled"):
            list(query.values(subject("12"), 100, "keys_query"))
        assert time.monotonic() - started < 5
    finally:
        release.set()
        holder.join()
    assert list(query.values(subject("12"), 100, "keys_query")) == ["a/12.jpg"]


@pytest.mark.integration
def test_keys_query_sessions_are_read_only_with_a_timeout(uploads_db) -> None:  # type: ignore[no-untyped-def]
    """The engine behind every keys query sets the timeout and read-only mode on each session."""
    url, _db = uploads_db
    with engine(url, read_only=True, timeout_seconds=2.5).connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2500ms"
        assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"


def test_sqlite_keys_query_is_interrupted_past_its_deadline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite has no statement timeout: the progress handler interrupts a statement past its deadline."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with create_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE t (u TEXT, k TEXT)"))
        conn.execute(text("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000) "
                          "INSERT INTO t SELECT '12', CAST(i AS TEXT) FROM c"))  # a 400M-row join
    slow = "SELECT a.k FROM t AS a JOIN t AS b ON a.u = b.u WHERE a.u = :user_id ORDER BY a.k"
    query = KeysQuery(url=url, sql=slow, timeout_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(RetryableError, match="keys_query failed: OperationalError"):
        list(query.values(subject("12"), 100, "keys_query"))
    assert time.monotonic() - started < 5
    dispose_engine(url)
