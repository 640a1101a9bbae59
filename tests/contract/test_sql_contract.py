"""SqlTarget runs the target contract on real PostgreSQL (a temporary database), SQLite and MariaDB.

Each store is a table of photos rows keyed by ``owner_id``; rows owned by nobody (NULL) must survive every
purge. Deletion and masking both run the contract, PostgreSQL's with a schema-qualified table and an
integer key, SQLite's with a text key, and a batch size of 2 so every purge takes several batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.contract.base import ContractStore, TargetContract
from tests.fixtures.services import temporary_mariadb
from workers.targets.selectors import dispose_engine
from workers.targets.sql import SqlConfig, SqlTarget

pytestmark = pytest.mark.integration

ROWS = {"12": 5, "123": 3, "1234": 2, "112": 1}  # rows per owner; 5 with batch size 2 is three batches
MASK = {"email": None, "display_name": "erased"}


class PhotosTable:
    """``photos(id, owner_id, email, display_name)``; ``masked`` says whether a purge masks or deletes,
    and so what counts as the subject's item: a row (delete) or a row not yet masked (mask)."""

    def __init__(self, url: str, table: str, owner_type: str, masked: bool) -> None:
        self.url, self.table, self.masked = url, table, masked
        self.db = create_engine(url)
        with self.db.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, owner_id {owner_type} NULL, "
                              "email VARCHAR(200) NULL, display_name VARCHAR(200) NULL)"))
        self._next = 1
        self._insert(None, 2)  # nobody's rows

    def _insert(self, owner: str | None, n: int) -> None:
        rows = [{"i": self._next + k, "o": owner, "e": f"u{owner}-{k}@example.org", "d": f"user {owner}"}
                for k in range(n)]
        self._next += n
        with self.db.begin() as conn:
            conn.execute(text(f"INSERT INTO {self.table} (id, owner_id, email, display_name) "
                              "VALUES (:i, :o, :e, :d)"), rows)

    def _count(self, where: str, params: dict[str, str]) -> int:
        if self.masked:
            where += " AND (email IS NOT NULL OR display_name IS NULL OR display_name <> 'erased')"
        with self.db.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {self.table} WHERE {where}"), params).scalar_one())

    def seed(self, user_id: str) -> int:
        self._insert(user_id, ROWS[user_id])
        return ROWS[user_id]

    def remaining(self, user_id: str) -> int:
        return self._count("owner_id = :o", {"o": user_id})

    def total(self) -> int:
        return self._count("1 = 1", {})


def sql_target(store: PhotosTable, **extra: object) -> SqlTarget:
    config: dict[str, object] = {"name": "photos-rows", "kind": "sql", "url": store.url, "table": store.table,
                                 "where": {"owner_id": "{user_id}"}, "batch_size": 2, **extra}
    if store.masked:
        config |= {"action": "mask", "mask": MASK}
    return SqlTarget(SqlConfig.model_validate(config))


@pytest.fixture
def postgresql_photos(pg_database: str) -> Iterator[tuple[str, str, str]]:
    """A schema-qualified table with an integer key."""
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA app"))
    engine.dispose()
    yield pg_database, "app.photos", "BIGINT"


@pytest.fixture
def sqlite_photos(tmp_path) -> Iterator[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    yield f"sqlite:///{tmp_path / 'app.db'}", "photos", "TEXT"


@pytest.fixture
def mariadb_photos() -> Iterator[tuple[str, str, str]]:
    with temporary_mariadb() as url:
        yield url, "photos", "VARCHAR(64)"
        dispose_engine(url)  # the adapter's pool, before the database is dropped


@pytest.fixture
def photos(request: pytest.FixtureRequest) -> Iterator[PhotosTable]:
    """``request.param`` is (engine, action): a PhotosTable on that engine."""
    engine, action = request.param
    url, table, owner_type = request.getfixturevalue(f"{engine}_photos")
    store = PhotosTable(url, table, owner_type, masked=action == "mask")
    yield store
    store.db.dispose()
    dispose_engine(url)  # the adapter's pool, before the database is dropped


ENGINES = [(engine, action) for engine in ("postgresql", "sqlite", "mariadb") for action in ("delete", "mask")]


@pytest.mark.parametrize("photos", ENGINES, indirect=True, ids="-".join)
class TestSqlContract(TargetContract):
    @pytest.fixture
    def store(self, photos: PhotosTable) -> ContractStore:
        return photos

    @pytest.fixture
    def target(self, store: PhotosTable) -> SqlTarget:
        return sql_target(store)
