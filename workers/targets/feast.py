"""Feast feature store: a subject's entity rows go from the online store and their rows from the Parquet files.

Data map example::

    - name: user-features
      kind: feast
      repo_path: ./feature_repo        # directory holding feature_store.yaml (relative to the worker's cwd)
      entity: user_id                  # the join key; its value comes from the identifier of the same name,
      value: "{user_id}"               #   or from this template when the names differ
      feature_views: [user_profile_stats]   # optional: every view keyed by the entity when omitted

What a purge does, in this order:

1. **Offline** (``FileSource`` on local Parquet files or directories): every file holding the subject's key
   is rewritten without those rows, one row group at a time (a large file never loads whole), into a
   temporary file beside it that is fsynced and then moved over the original with ``os.replace``. Other
   rows keep their schema, values and order. Going first means a ``feast materialize`` running later (or during the
   purge) can no longer bring the subject back.
2. **Online** (SQLite or Redis online store, ``feast_online.py``): the subject's entity key is built with
   Feast's own functions (the view's entity column type, ``python_values_to_proto_values``,
   ``serialize_entity_key`` with the repo's ``entity_key_serialization_version``, Feast's table names and
   Redis key/hash-field helpers), and only those rows are deleted. In Redis, views keyed by the same entity
   share one hash: a purged view loses only its own fields and its ``_ts:<view>`` field, atomically (a Lua
   script); the hash goes when no view's timestamp field is left in it (Redis drops an empty hash by itself).

``count`` reports online entity rows (one per view holding the key) plus offline rows; ``verify`` asks Feast
(``get_online_features`` must return null for every feature of the purged views), reads the online store
directly as well (so a view TTL cannot hide a row that is still stored) and scans the files again.

Levels (see workers/targets/base.py), chosen honestly:

- Offline files: ``bytes_reclaimed``. The old file is replaced, not edited; no copy is left behind by lethe.
- SQLite online store: ``bytes_reclaimed``. The delete runs with ``PRAGMA secure_delete=ON``, so SQLite
  overwrites the deleted cells and freed pages with zeros instead of leaving them until a VACUUM, and a
  WAL-mode database is checkpointed (``TRUNCATE``) so no old page image survives in the ``-wal`` file. If
  SQLite refuses secure_delete or another reader keeps the checkpoint from finishing, the level drops to
  ``invisible`` for that purge.
- Redis online store: ``unindexed``. The fields are gone from memory and from the keyspace, but an RDB
  snapshot or AOF file may hold them until Redis next saves or rewrites it; lethe does not force that on
  a shared server.

Errors: Redis unreachable (refused, timed out, loading), SQLite busy or an I/O error on a file raise
``RetryableError``; the Redis client retries a blip twice within a second, then leaves the waiting to the
task's backoff. Anything else (including every Feast or pyarrow error) is a ``PermanentError`` that names
the operation and the error type only, since vendor messages can quote keys and paths.

Checked when the data map loads (cheap, no Feast import): field shapes and the placeholder. Loading the
repo takes Feast's import (seconds), so a repo that does not load, an unknown entity or view, a view not
keyed by the entity, an unsupported online store or offline source all fail the task at run time with a
``PermanentError`` that says which (``FeastTarget.check()`` runs the same checks on demand). Not supported
(refused, never half-done): composite-key views, remote (s3://, gs://) or non-Parquet offline sources,
online stores other than SQLite and Redis, Parquet files with other hard links.

Modules: the entry (``feast_config.py``), the loaded repo (``feast_repo.py``), the offline files
(``feast_offline.py``) and the online stores (``feast_online.py``).

The demo's repo builder (synthetic users for ``lethe demo`` and the tests) is in ``orchestrator/demo_estate.py``.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import redis.exceptions

from orchestrator.identifiers import Subject
from workers.targets.base import Heartbeat, PermanentError, RetryableError, TargetConfig, TargetError
from workers.targets.feast_config import FeastConfig, entity_value
from workers.targets.feast_offline import offline_matches
from workers.targets.feast_online import RedisOnline
from workers.targets.feast_repo import Repo, load_repo, typed_value
from workers.targets.parquet_files import local_fs, rewrite_without

__all__ = ["FeastConfig", "FeastTarget"]

REDIS_RETRYABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.TryAgainError,
)
PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EISDIR, errno.ENOTDIR})


class FeastTarget:
    kind: ClassVar[str] = "feast"
    Config: ClassVar[type[TargetConfig]] = FeastConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"online_store", "offline_files", "sqlite", "redis"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = REDIS_RETRYABLE
    level = "invisible"  # until the repo is loaded and its stores are known (see the module docstring)

    def __init__(self, config: FeastConfig):
        self.config = config
        self._repo: Repo | None = None

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        repo = self._load()
        keys = self._keys(repo, subject)
        with self._translate("count"):
            online = repo.online.present(keys) if repo.online else set()
            return len(online) + sum(n for *_, n in offline_matches(repo, self.config, subject))

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        repo = self._load()
        keys = self._keys(repo, subject)
        self.level = repo.level
        removed = 0
        with self._translate("purge"):
            if repo.online:
                repo.online.present(keys)  # reach the online store before touching any file
            for path, column, value, found in offline_matches(repo, self.config, subject, heartbeat):
                if found:
                    removed += rewrite_without(local_fs(), str(path), {column: value}, heartbeat)
            heartbeat()
            if repo.online:
                deleted, complete = repo.online.delete(keys)
                removed += deleted
                if not complete:
                    self.level = "invisible"
            heartbeat()
        return removed

    def verify(self, subject: Subject) -> int:
        repo = self._load()
        keys = self._keys(repo, subject)
        with self._translate("verify"):
            online: set[str] = set()
            if repo.online:
                online = repo.online.present(keys) | self._served(repo, subject)
            return len(online) + sum(n for *_, n in offline_matches(repo, self.config, subject))

    def check(self) -> None:
        """Load the repo and check the entity, views and stores; raise PermanentError saying what is wrong."""
        self._load()

    def probe(self, earlier: object) -> list[str]:
        """``check-map --probe``: the repo loads, its feature views exist and are keyed by the entity, and
        a Redis online store answers PING. A problem raises the TargetError the tasks would."""
        repo = self._load()
        if isinstance(repo.online, RedisOnline):
            with self._translate("probe"):
                repo.online.client.ping()
        return []

    # -- loading ----------------------------------------------------------------------------------
    def _load(self) -> Repo:
        if self._repo is None:
            with self._translate("load"):
                self._repo = load_repo(self.config)
            self.level = self._repo.level
        return self._repo

    def _keys(self, repo: Repo, subject: Subject) -> dict[str, Any]:
        """view name -> Feast EntityKey proto of the subject, typed as Feast types the view's join key."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values
        from feast.value_type import ValueType

        keys: dict[str, Any] = {}
        for view in repo.views:
            if view.online:
                value = typed_value(entity_value(self.config, subject), view.value_type, repo.join_key)
                proto = python_values_to_proto_values([value], ValueType[view.value_type])
                keys[view.name] = EntityKey(join_keys=[repo.join_key], entity_values=proto)
        return keys

    # -- online, through Feast ----------------------------------------------------------------------
    def _served(self, repo: Repo, subject: Subject) -> set[str]:
        """Views for which get_online_features returns any non-null feature for the subject."""
        served: set[str] = set()
        online = [v for v in repo.views if v.online and v.fv.features]
        if not online:
            return served
        by_type = {v.value_type for v in online}
        for value_type in sorted(by_type):
            views = [v for v in online if v.value_type == value_type]
            value = typed_value(entity_value(self.config, subject), value_type, repo.join_key)
            refs = [f"{v.name}:{f.name}" for v in views for f in v.fv.features]
            answer = repo.store.get_online_features(
                features=refs, entity_rows=[{repo.join_key: value}], full_feature_names=True
            ).to_dict()
            for v in views:
                if any(answer.get(f"{v.name}__{f.name}", [None])[0] is not None for f in v.fv.features):
                    served.add(v.name)
        return served

    @contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """Vendor errors become TargetErrors naming the operation and error type, never a key, value or path."""
        where = f"Feast {operation} on target {self.config.name!r}"
        try:
            yield
        except TargetError:
            raise
        except REDIS_RETRYABLE as exc:
            raise RetryableError(f"{where}: online store unreachable ({type(exc).__name__})") from None
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
            if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise RetryableError(f"{where}: SQLite online store busy ({code})") from None
            raise PermanentError(f"{where}: SQLite error {code}") from None
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            if exc.errno in PERMANENT_ERRNOS:
                raise PermanentError(f"{where}: file error {code}") from None
            raise RetryableError(f"{where}: file error {code}") from None
        except Exception as exc:  # Feast and pyarrow messages can quote values and paths: keep the type only
            raise PermanentError(f"{where}: {type(exc).__name__}") from None
