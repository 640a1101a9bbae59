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

The demo's repo builder (synthetic users for ``lethe demo`` and the tests) is in ``orchestrator/demo_estate.py``.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import redis.exceptions
from pydantic import Field, field_validator, model_validator

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets.base import (
    Heartbeat,
    PermanentError,
    RetryableError,
    TargetConfig,
    TargetError,
    require_placeholder,
)
from workers.targets.feast_online import RedisOnline, SqliteOnline
from workers.targets.parquet_files import Location, count_in_file, local_fs, rewrite_without
from workers.targets.selectors import canonical_integer

# Feast phones home nowhere in 0.67, but older releases read this; a GDPR tool never sends usage data.
os.environ.setdefault("FEAST_USAGE", "False")

INT_RANGES = {"INT32": (-(2**31), 2**31 - 1), "INT64": (-(2**63), 2**63 - 1)}
REDIS_RETRYABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.TryAgainError,
)
PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EISDIR, errno.ENOTDIR})

class FeastConfig(TargetConfig):
    repo_path: str = Field(min_length=1, description="Feast repository directory holding feature_store.yaml.")
    entity: str = Field(
        min_length=1, max_length=128, pattern=r"^[^\s{}]+$",
        description="Join key of the entity whose rows belong to the subject, e.g. user_id.",
    )
    value: str | None = Field(
        None, description='Templated entity value, e.g. "{user_id}"; "{<entity>}" when omitted.'
    )
    feature_views: tuple[str, ...] | None = Field(
        None, description="Feature views to purge; every view keyed by the entity when omitted."
    )

    template_fields: ClassVar[tuple[str, ...]] = ("value",)

    @model_validator(mode="before")
    @classmethod
    def _default_value(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("value") is None:
            entity = data.get("entity")
            if isinstance(entity, str) and entity.isidentifier():
                data = {**data, "value": "{" + entity + "}"}
        return data

    @field_validator("value")
    @classmethod
    def _value_names_the_subject(cls, value: str | None) -> str | None:
        if value is not None:
            require_placeholder("value", value)
        return value

    @field_validator("feature_views")
    @classmethod
    def _views_are_names(cls, views: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if views is None:
            return None
        if not views:
            raise ValueError("feature_views must name at least one view (omit it for every view of the entity)")
        if any(not v or not v.strip() for v in views):
            raise ValueError("feature_views must be non-empty names")
        if len(set(views)) != len(views):
            raise ValueError("feature_views names a view twice")
        return views

    @model_validator(mode="after")
    def _has_value(self) -> FeastConfig:
        if self.value is None:
            raise ValueError("entity is not a plain identifier name: give value: with an {identifier} placeholder")
        return self


# --- the repo, loaded once per target instance ------------------------------------------------------------


@dataclass
class _View:
    name: str
    fv: Any  # feast.FeatureView
    value_type: str  # Feast ValueType name of the join key: INT64, INT32, STRING
    online: bool
    source: Path | None  # resolved local Parquet file or directory
    column: str  # the join key's column in the source files (after the source's field_mapping)


@dataclass
class _Repo:
    store: Any  # feast.FeatureStore
    join_key: str
    views: list[_View]
    online: SqliteOnline | RedisOnline | None
    level: str


class FeastTarget:
    kind: ClassVar[str] = "feast"
    Config: ClassVar[type[TargetConfig]] = FeastConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"online_store", "offline_files", "sqlite", "redis"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = REDIS_RETRYABLE
    level = "invisible"  # until the repo is loaded and its stores are known (see the module docstring)

    def __init__(self, config: FeastConfig):
        self.config = config
        self._repo: _Repo | None = None

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        repo = self._load()
        keys = self._keys(repo, subject)
        with self._translate("count"):
            online = repo.online.present(keys) if repo.online else set()
            return len(online) + sum(n for *_, n in self._offline_matches(repo, subject))

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        repo = self._load()
        keys = self._keys(repo, subject)
        self.level = repo.level
        removed = 0
        with self._translate("purge"):
            if repo.online:
                repo.online.present(keys)  # reach the online store before touching any file
            for path, column, value, found in self._offline_matches(repo, subject, heartbeat):
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
            return len(online) + sum(n for *_, n in self._offline_matches(repo, subject))

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
    def _load(self) -> _Repo:
        if self._repo is None:
            with self._translate("load"):
                self._repo = _load_repo(self.config)
            self.level = self._repo.level
        return self._repo

    def _keys(self, repo: _Repo, subject: Subject) -> dict[str, Any]:
        """view name -> Feast EntityKey proto of the subject, typed as Feast types the view's join key."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values
        from feast.value_type import ValueType

        keys: dict[str, Any] = {}
        for view in repo.views:
            if view.online:
                value = _typed_value(self._value(subject), view.value_type, repo.join_key)
                proto = python_values_to_proto_values([value], ValueType[view.value_type])
                keys[view.name] = EntityKey(join_keys=[repo.join_key], entity_values=proto)
        return keys

    def _value(self, subject: Subject) -> str:
        assert self.config.value is not None
        value: str = fill(self.config.value, subject)
        return value

    # -- offline ----------------------------------------------------------------------------------
    def _files(self, repo: _Repo) -> dict[Path, tuple[str, str]]:
        """Every Parquet file of the views' sources -> (entity column, Feast value type), one entry per file."""
        files: dict[Path, tuple[str, str]] = {}
        for view in repo.views:
            if view.source is None:
                continue
            for path in map(Path, Location.of(str(view.source)).files()):
                spec = (view.column, view.value_type)
                if files.setdefault(path, spec) != spec:
                    raise PermanentError(
                        f"Feast target {self.config.name!r}: views read one offline file with different "
                        "entity columns or types; nothing deleted"
                    )
        return files

    def _offline_matches(
        self, repo: _Repo, subject: Subject, heartbeat: Heartbeat | None = None
    ) -> Iterator[tuple[Path, str, int | str, int]]:
        """(file, entity column, typed value, rows holding it) for every offline file of the views."""
        for path, (column, value_type) in sorted(self._files(repo).items()):
            value = _typed_value(self._value(subject), value_type, repo.join_key)
            yield path, column, value, count_in_file(local_fs(), str(path), {column: value}, heartbeat)

    # -- online, through Feast ----------------------------------------------------------------------
    def _served(self, repo: _Repo, subject: Subject) -> set[str]:
        """Views for which get_online_features returns any non-null feature for the subject."""
        served: set[str] = set()
        online = [v for v in repo.views if v.online and v.fv.features]
        if not online:
            return served
        by_type = {v.value_type for v in online}
        for value_type in sorted(by_type):
            views = [v for v in online if v.value_type == value_type]
            value = _typed_value(self._value(subject), value_type, repo.join_key)
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


def _load_repo(config: FeastConfig) -> _Repo:
    name = config.name
    try:
        from feast import FeatureStore, FeatureView

        store = FeatureStore(repo_path=str(Path(config.repo_path).expanduser()))
    except Exception as exc:
        raise PermanentError(
            f"Feast repo of target {name!r} does not load ({type(exc).__name__}): repo_path must be a Feast "
            "repository directory with a valid feature_store.yaml"
        ) from None
    repo_config = store.config
    entities = store.list_entities(allow_cache=False)
    if not any(e.join_key == config.entity for e in entities):
        known = ", ".join(sorted({e.join_key for e in entities})) or "none: has feast apply run?"
        raise PermanentError(
            f"Feast target {name!r}: no entity with join key {config.entity!r} in the repo (join keys: {known})"
        )
    by_name: dict[str, Any] = {}
    for fv in store.list_all_feature_views(allow_cache=False):
        if isinstance(fv, FeatureView):  # plain, batch and stream views; on-demand views store nothing
            by_name.setdefault(fv.name, fv)
    keyed = {n: fv for n, fv in by_name.items() if config.entity in fv.join_keys}
    if config.feature_views is None:
        chosen = sorted(keyed)
        if not chosen:
            raise PermanentError(f"Feast target {name!r}: no feature view is keyed by {config.entity!r}")
    else:
        chosen = list(config.feature_views)
        unknown = [v for v in chosen if v not in by_name]
        if unknown:
            raise PermanentError(f"Feast target {name!r}: unknown feature views: {', '.join(unknown)}")
        unkeyed = [v for v in chosen if v not in keyed]
        if unkeyed:
            raise PermanentError(
                f"Feast target {name!r}: feature views not keyed by {config.entity!r}: {', '.join(unkeyed)}"
            )
    composite = [v for v in chosen if keyed[v].join_keys != [config.entity]]
    if composite:
        raise PermanentError(
            f"Feast target {name!r}: views with composite entity keys are not supported: {', '.join(composite)}"
        )
    views = [_view(name, keyed[v], config.entity, repo_config) for v in chosen]
    _refuse_shared_sources(name, views, [_other_source(name, fv, repo_config) for n, fv in keyed.items()
                                         if n not in chosen])
    online: SqliteOnline | RedisOnline | None = None
    level = "bytes_reclaimed"
    if any(v.online for v in views):
        store_type = str(repo_config.online_store.type)
        if store_type == "sqlite" or store_type.endswith("SqliteOnlineStore"):
            online = SqliteOnline(repo_config, views)
        elif store_type == "redis" or store_type.endswith("RedisOnlineStore"):
            online = RedisOnline(repo_config, views)
            level = "unindexed"
        else:
            raise PermanentError(
                f"Feast target {name!r}: online store type {store_type!r} is not supported (sqlite, redis)"
            )
    return _Repo(store=store, join_key=config.entity, views=views, online=online, level=level)


def _view(target: str, fv: Any, join_key: str, repo_config: Any) -> _View:
    column = next((c for c in fv.entity_columns if c.name == join_key), None)
    if column is None:
        raise PermanentError(f"Feast target {target!r}: view {fv.name!r} has no column for {join_key!r}")
    value_type = column.dtype.to_value_type().name
    if value_type not in ("INT64", "INT32", "STRING"):
        raise PermanentError(
            f"Feast target {target!r}: entity type {value_type} of view {fv.name!r} is not supported "
            "(INT64, INT32, STRING)"
        )
    source = _view_source(target, fv, repo_config)
    mapping = {v: k for k, v in (getattr(fv.batch_source, "field_mapping", None) or {}).items()}
    return _View(name=fv.name, fv=fv, value_type=value_type, online=bool(fv.online), source=source,
                 column=mapping.get(join_key, join_key))


def _view_source(target: str, fv: Any, repo_config: Any) -> Path | None:
    """The view's offline data as a local path; anything else is refused (materialize would restore it)."""
    from feast.data_format import ParquetFormat
    from feast.infra.offline_stores.file_source import FileSource

    source = fv.batch_source
    if source is None:
        return None
    if not isinstance(source, FileSource):
        raise PermanentError(
            f"Feast target {target!r}: view {fv.name!r} has a {type(source).__name__}; only file sources "
            "(Parquet) are supported, and rows left there would come back on the next materialize"
        )
    if source.file_format is not None and not isinstance(source.file_format, ParquetFormat):
        raise PermanentError(
            f"Feast target {target!r}: view {fv.name!r}: only Parquet file sources are supported "
            f"(found {type(source.file_format).__name__})"
        )
    uri = source.path.removeprefix("file://")
    resolved = FileSource.get_uri_for_file_path(repo_config.repo_path, uri)
    if "://" in resolved:
        raise PermanentError(
            f"Feast target {target!r}: view {fv.name!r} reads a remote file source; only local files are supported"
        )
    return Path(os.path.realpath(resolved))


def _other_source(target: str, fv: Any, repo_config: Any) -> Path | None:
    try:
        return _view_source(target, fv, repo_config)
    except PermanentError:
        return None  # not a local file: it cannot share this target's files


def _refuse_shared_sources(target: str, chosen: list[_View], others: list[Path | None]) -> None:
    """A view this target leaves alone must not lose offline rows because it reads the same files."""
    mine = {v.source for v in chosen if v.source is not None}
    for other in others:
        if other is None:
            continue
        for path in mine:
            if other == path or other in path.parents or path in other.parents:
                raise PermanentError(
                    f"Feast target {target!r}: a feature view keyed by the entity but not in feature_views reads "
                    "the same offline files; list it in feature_views too, or give it its own source"
                )


# --- values -----------------------------------------------------------------------------------------------


def _typed_value(text: str, value_type: str, join_key: str) -> int | str:
    """The subject's value as Feast stores the join key; an unconvertible value fails (never a silent zero)."""
    if value_type == "STRING":
        return text
    if value_type in INT_RANGES:
        low, high = INT_RANGES[value_type]
        number = canonical_integer(text)  # "012", "+12", "1_2", " 12", "-0" spell none
        if number is not None and low <= number <= high:
            return number
        raise PermanentError(
            f"the subject's value for Feast join key {join_key!r} is not a canonical {value_type} integer"
        )
    raise PermanentError(f"Feast join key {join_key!r} has unsupported type {value_type}")
