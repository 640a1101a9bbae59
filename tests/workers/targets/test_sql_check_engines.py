"""The security review's widening queries on the real engines: each returns every row for one subject on
the engine it targets, and the checker refuses each in that engine's dialect, and in a data map."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.datamap import DataMap, DataMapError
from tests.fixtures.services import temporary_mariadb
from workers.targets.selectors import dispose_engine
from workers.targets.sql_check import UnsafeQuery, check_read_query, dialect_of

pytestmark = pytest.mark.integration

USERS = {1: "carl@example.org", 2: "ann@example.org", 3: "bob@example.org"}
SUBJECT = {"email": "carl@example.org", "user_id": "0"}
# query -> engines it widens on (SQLite resolves a select-list alias in WHERE; MariaDB runs /*! */)
ALL = ("sqlite", "postgresql", "mariadb")
WIDENING = {
    "SELECT id FROM (SELECT id, :email AS email FROM users) t WHERE t.email = :email": ALL,
    "WITH t AS (SELECT id, :email AS email FROM users) SELECT id FROM t WHERE email = :email": ALL,
    "SELECT id, :email AS e FROM users WHERE e = :email": ("sqlite",),
    "SELECT o.user_id FROM users u JOIN orders o ON o.id = o.id WHERE u.email = :email": ALL,
    "SELECT id FROM users WHERE CAST(email AS INTEGER) = :user_id": ("sqlite",),
    "SELECT id FROM users WHERE email = :email /*! OR 1=1 */": ("mariadb",),
}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    elif request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
    else:
        url = request.getfixturevalue("mariadb_url")
    db = create_engine(url)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(100))"))
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)"))
        conn.execute(text("INSERT INTO users VALUES (:i, :e)"), [{"i": i, "e": e} for i, e in USERS.items()])
        conn.execute(text("INSERT INTO orders VALUES (10, 1), (20, 2), (30, 3)"))  # one order each
    db.dispose()
    yield request.param, url
    dispose_engine(url)


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    with temporary_mariadb() as url:
        yield url


@pytest.mark.parametrize("sql", WIDENING)
def test_a_query_that_returns_everyones_rows_is_refused(app: tuple[str, str], sql: str) -> None:
    engine_name, url = app
    if engine_name in WIDENING[sql]:  # the attack is real on this engine
        db = create_engine(url)
        with db.connect() as conn:
            found = {row[0] for row in conn.execute(text(sql), {k: v for k, v in SUBJECT.items() if f":{k}" in sql})}
        db.dispose()
        assert found == set(USERS)
    with pytest.raises(UnsafeQuery):
        check_read_query(sql, dialect_of(url), what="keys_query.sql")


def test_a_keys_query_reading_a_parameter_through_a_subquery_does_not_load() -> None:
    sql = "SELECT id FROM (SELECT id, :email AS email FROM users) t WHERE t.email = :email"
    with pytest.raises(DataMapError, match="keys_query"):
        DataMap.parse(f"""
version: 1
identifiers: [email]
targets:
  - {{name: up, kind: s3, bucket: uploads, keys_query: {{url: "sqlite://", sql: "{sql}"}}}}
""")
