"""FeastTarget runs the target contract against real Feast repos built in a temp dir, applied and materialized.

Two online-store flavours: SQLite in the repo (INT64 entity) and the machine's Redis, database 13 only
(STRING entity). Each user has rows in two Parquet files (views ``user_profile_stats`` and
``user_activity``, several row groups); ``seed`` appends a user's rows and runs ``feast materialize``, so a
seeded user is 2 online entity rows plus 2 x ROWS offline rows.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.demo_estate import DEMO_VIEWS, build_demo_repo, demo_frames, write_demo_file
from tests.contract.base import SUBJECT, ContractStore, TargetContract, subject
from tests.fixtures.services import FEAST_REDIS_DB
from workers.targets.feast import FeastConfig, FeastTarget

os.environ.setdefault("FEAST_USAGE", "False")
pytestmark = pytest.mark.integration

REDIS_DB = FEAST_REDIS_DB  # the only Redis database these tests may touch (one per parallel test process)
REDIS_ONLINE = {"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"}
ROWS = 3  # offline rows per user and view
UNOWNED = ("1", "21", "120")  # users no contract subject is; their rows count in total() only


RedisClient = Any  # redis-py's stubs type every reply as "Awaitable | value"; the sync client returns values


def feast_redis_db() -> RedisClient:
    return redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)


@pytest.fixture
def feast_redis() -> Iterator[RedisClient]:
    """The Feast tests' Redis database, emptied before and after the test."""
    client = feast_redis_db()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class FeastStore:
    """A demo repo holding the UNOWNED users; read back through Feast's public API and the raw stores."""

    def __init__(self, path: Path, online_store: dict[str, Any] | None, entity_type: str) -> None:
        self.entity_type = entity_type
        self.repo = build_demo_repo(path, UNOWNED, online_store=online_store, entity_type=entity_type,
                                    rows_per_user=ROWS, row_group_size=4)
        self.feast = self.repo.store()
        self.redis = feast_redis_db() if online_store else None

    def key(self, user_id: str) -> int | str:
        return int(user_id) if self.entity_type == "int64" else user_id

    def seed(self, user_id: str) -> int:
        import pandas as pd

        for view, frame in demo_frames([user_id], self.entity_type, ROWS).items():
            path = self.repo.files[view]
            write_demo_file(path, pd.concat([pd.read_parquet(path), frame], ignore_index=True), row_group_size=4)
        self.feast.materialize(self.repo.start, self.repo.end)
        return len(DEMO_VIEWS) * (1 + ROWS)

    def online_views(self, user_id: str) -> int:
        """Views for which Feast's get_online_features returns a value for the user."""
        refs = [f"{v}:{f.name}" for v in DEMO_VIEWS for f in self.feast.get_feature_view(v).features]
        answer = self.feast.get_online_features(
            features=refs, entity_rows=[{"user_id": self.key(user_id)}], full_feature_names=True
        ).to_dict()
        return sum(any(answer[r.replace(":", "__")][0] is not None for r in refs if r.startswith(f"{v}:"))
                   for v in DEMO_VIEWS)

    def offline_rows(self, user_id: str | None = None) -> int:
        import pyarrow.parquet as pq

        total = 0
        for path in self.repo.files.values():
            keys = pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist()
            total += len(keys) if user_id is None else keys.count(self.key(user_id))
        return total

    def remaining(self, user_id: str) -> int:
        return self.online_views(user_id) + self.offline_rows(user_id)

    def online_total(self) -> int:
        """Online entity rows of every user, read from the store itself (not through Feast)."""
        if self.redis is not None:
            return sum(f.startswith(b"_ts:") for key in self.redis.scan_iter() for f in self.redis.hkeys(key))
        with sqlite3.connect(self.repo.path / "online_store.db") as conn:
            return sum(conn.execute(f'SELECT COUNT(DISTINCT entity_key) FROM "lethe_demo_{v}"').fetchone()[0]
                       for v in DEMO_VIEWS)

    def total(self) -> int:
        return self.online_total() + self.offline_rows()


def feast_target(repo: Path, **fields: Any) -> FeastTarget:
    return FeastTarget(FeastConfig.model_validate(
        {"name": "user-features", "kind": "feast", "repo_path": str(repo), "entity": "user_id", **fields}
    ))


class TestFeastSqliteContract(TargetContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ContractStore:
        return FeastStore(tmp_path / "repo", None, "int64")

    @pytest.fixture
    def target(self, store: FeastStore) -> FeastTarget:
        return feast_target(store.repo.path)

    def test_sqlite_level_is_bytes_reclaimed(self, target: FeastTarget, store: FeastStore) -> None:
        """With the SQLite online store and Parquet files the purge reports bytes_reclaimed."""
        store.seed(SUBJECT)
        target.purge(subject(SUBJECT), lambda done=None: None)
        assert target.level == "bytes_reclaimed"


class TestFeastRedisContract(TargetContract):
    @pytest.fixture
    def store(self, tmp_path: Path, feast_redis: RedisClient) -> ContractStore:
        return FeastStore(tmp_path / "repo", REDIS_ONLINE, "string")

    @pytest.fixture
    def target(self, store: FeastStore) -> FeastTarget:
        return feast_target(store.repo.path)

    def test_redis_level_is_unindexed(self, target: FeastTarget, store: FeastStore) -> None:
        """Redis may keep purged fields in RDB/AOF files until its next save, so the level is unindexed."""
        store.seed(SUBJECT)
        target.purge(subject(SUBJECT), lambda done=None: None)
        assert target.level == "unindexed"
