"""kind: sql selects exactly the subject's value, whatever the column's collation: MariaDB's
utf8mb4_general_ci (accents, case and trailing spaces ignored), a PostgreSQL nondeterministic collation,
a SQLite COLLATE NOCASE column. Count, purge and verify alike; every other row stays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.identifiers import Subject
from tests.contract.base import Beats
from tests.fixtures.services import temporary_mariadb
from workers.targets.base import build_target
from workers.targets.selectors import dispose_engine
from workers.targets.sql import SqlConfig, SqlTarget

pytestmark = pytest.mark.integration

NAMES = {1: "jose", 2: "José", 3: "JOSE ", 4: "ann", 5: "JOSE"}
COLUMN = {"mariadb": "VARCHAR(50) COLLATE utf8mb4_general_ci", "mariadb-latin1": "VARCHAR(50) CHARACTER SET latin1",
          "postgresql": 'TEXT COLLATE "loose"', "sqlite": "TEXT COLLATE NOCASE"}


@pytest.fixture(params=sorted(COLUMN))
def loose_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A table of usernames whose column collation treats look-alikes of ``jose`` as equal."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    elif request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
    else:
        url = request.getfixturevalue("mariadb_url")
    db = create_engine(url)
    with db.begin() as conn:
        if request.param == "postgresql":  # case- and accent-insensitive, as an application might declare
            conn.execute(text("CREATE COLLATION loose (provider = icu, locale = 'und-u-ks-level1', "
                              "deterministic = false)"))
        conn.execute(text(f"CREATE TABLE accounts (id INTEGER PRIMARY KEY, username {COLUMN[request.param]})"))
        conn.execute(text("INSERT INTO accounts VALUES (:i, :u)"), [{"i": i, "u": u} for i, u in NAMES.items()])
        widened = conn.execute(text("SELECT count(*) FROM accounts WHERE username = 'jose'")).scalar()
    db.dispose()
    assert widened and widened > 1  # the collation really is wider than the value
    yield url
    dispose_engine(url)


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    with temporary_mariadb() as url:
        yield url
        dispose_engine(url)


def usernames(url: str) -> set[int]:
    db = create_engine(url)
    with db.connect() as conn:
        ids = {row[0] for row in conn.execute(text("SELECT id FROM accounts"))}
    db.dispose()
    return ids


def test_a_wide_collation_never_widens_the_subject(loose_db: str) -> None:
    built = build_target(SqlConfig.model_validate({"name": "accounts", "kind": "sql", "url": loose_db,
                                                   "table": "accounts", "where": {"username": "{username}"}}))
    assert isinstance(built, SqlTarget)
    jose = Subject.parse({"username": "jose"}, {"username": None})
    try:
        assert built.count(jose) == 1
        assert built.purge(jose, Beats()) == 1
        assert built.verify(jose) == 0
        assert usernames(loose_db) == set(NAMES) - {1}
        assert built.count(Subject.parse({"username": "José"}, {"username": None})) == 1
    finally:
        built.engine.dispose()
