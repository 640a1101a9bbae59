"""Feast's online stores as lethe erases from them: SQLite (one table per view, secure_delete, WAL
checkpointed) and Redis (one hash per entity key shared by the entity's views; a view's fields go atomically).
The loaded repo (``workers/targets/feast_repo.py``) builds them from its views (``name``, ``fv``,
``online``); its docstring says which level each reaches."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from workers.targets.base import PermanentError

# Deletes a view's hash fields; drops the hash when no view's timestamp field (ARGV[1] prefix) is left,
# so orphaned fields of features removed from a view's definition do not outlive the subject's rows.
# Returns how many of the view's fields were removed. Atomic: a concurrent write cannot slip in between.
REDIS_PURGE_VIEW = """
local removed = redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
local prefix = ARGV[1]
local rest = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(rest) do
  if string.sub(f, 1, #prefix) == prefix then return removed end
end
if #rest > 0 then redis.call('DEL', KEYS[1]) end
return removed
"""


class SqliteOnline:
    """Feast's SQLite online store: one table per view, one row per (entity key, feature)."""

    def __init__(self, repo_config: Any, views: Sequence[Any]):
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import compute_table_id
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        self._serialize = serialize_entity_key
        self.version = repo_config.entity_key_serialization_version
        self.path = SqliteOnlineStore._get_db_path(repo_config)
        versioning = bool(getattr(repo_config.registry, "enable_online_feature_view_versioning", False))
        self.tables = {v.name: compute_table_id(repo_config.project, v.fv, versioning) for v in views if v.online}

    def _key(self, entity_key: Any) -> bytes:
        key: bytes = self._serialize(entity_key, entity_key_serialization_version=self.version)
        return key

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection | None]:
        if not os.path.exists(self.path):
            yield None  # never materialized: nothing stored (and never create the file)
            return
        conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=30, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _existing(conn: sqlite3.Connection) -> set[str]:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def present(self, keys: Mapping[str, Any]) -> set[str]:
        with self._connect() as conn:
            if conn is None:
                return set()
            existing = self._existing(conn)
            return {
                view for view, table in self.tables.items()
                if table in existing and conn.execute(
                    f"SELECT 1 FROM {_quote(table)} WHERE entity_key = ? LIMIT 1", (self._key(keys[view]),)
                ).fetchone()
            }

    def delete(self, keys: Mapping[str, Any]) -> tuple[int, bool]:
        """Delete the rows in one transaction with secure_delete on; (entity rows, bytes overwritten)."""
        with self._connect() as conn:
            if conn is None:
                return 0, True
            secure = conn.execute("PRAGMA secure_delete = ON").fetchone()[0] == 1
            existing = self._existing(conn)
            deleted = 0
            conn.execute("BEGIN IMMEDIATE")
            try:
                for view, table in self.tables.items():
                    if table in existing:
                        cur = conn.execute(f"DELETE FROM {_quote(table)} WHERE entity_key = ?",
                                           (self._key(keys[view]),))
                        deleted += cur.rowcount > 0
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            checkpointed = True
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                checkpointed = busy == 0
            return deleted, secure and checkpointed


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class RedisOnline:
    """Feast's Redis online store: one hash per entity key (shared by the entity's views), fields per view."""

    def __init__(self, repo_config: Any, views: Sequence[Any]):
        from feast.infra.online_stores.helpers import compute_versioned_name
        from feast.infra.online_stores.redis import RedisOnlineStore

        self.repo_config = repo_config
        self.feast = RedisOnlineStore()
        versioning = bool(getattr(repo_config.registry, "enable_online_feature_view_versioning", False))
        self.fields: dict[str, list[str | bytes]] = {}
        self.ts_prefix = ""
        for view in views:
            if not view.online:
                continue
            stored_name = compute_versioned_name(view.fv, versioning)
            # Feast's own read path: the view's hash fields, its timestamp field ("_ts:<view>") last.
            _, fields = self.feast._generate_hset_keys_for_features(view.fv, None, fv_name_override=stored_name)
            last = fields[-1]
            ts = last.decode() if isinstance(last, bytes) else str(last)
            if not ts.endswith(stored_name) or len(ts) == len(stored_name):
                raise PermanentError("this Feast version lays out Redis hash fields in a way lethe does not know")
            self.fields[view.name] = list(fields)
            self.ts_prefix = ts[: len(ts) - len(stored_name)]
        self._client: Any = None
        self._script: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry

            client = self.feast._get_client(self.repo_config.online_store)
            # A blip is retried here, briefly; an outage becomes a RetryableError at once and the task's own
            # backoff takes over (redis-py's default would block the worker ~7 s per pipeline first).
            if hasattr(client, "set_retry"):
                client.set_retry(Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2))
            self._script = client.register_script(REDIS_PURGE_VIEW)
            self._client = client
        return self._client

    def _key(self, entity_key: Any) -> bytes:
        key: bytes = self.feast._generate_redis_keys_for_entities(self.repo_config, [entity_key])[0]
        return key

    def present(self, keys: Mapping[str, Any]) -> set[str]:
        client = self.client
        views = list(self.fields)
        with client.pipeline(transaction=False) as pipe:
            for view in views:
                pipe.hmget(self._key(keys[view]), self.fields[view])
            answers = pipe.execute()
        return {view for view, values in zip(views, answers, strict=True) if any(v is not None for v in values)}

    def delete(self, keys: Mapping[str, Any]) -> tuple[int, bool]:
        self.client  # noqa: B018 - connects and registers the script
        deleted = 0
        for view, fields in self.fields.items():
            removed = self._script(keys=[self._key(keys[view])], args=[self.ts_prefix, *fields])
            deleted += int(removed) > 0
        return deleted, True
