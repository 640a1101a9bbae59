"""A Feast repo as the Feast target erases from it, loaded and checked once per target instance: the entity's
views (their join key type, online or not, their local Parquet source and its entity column), refusing what
lethe cannot erase completely (composite keys, remote or non-Parquet sources, a view left out that reads the
same files, other online stores), and the subject's value typed as Feast stores the join key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.targets.base import PermanentError
from workers.targets.feast_config import FeastConfig
from workers.targets.feast_online import RedisOnline, SqliteOnline
from workers.targets.selectors import canonical_integer

# Feast phones home nowhere in 0.67, but older releases read this; a GDPR tool never sends usage data.
os.environ.setdefault("FEAST_USAGE", "False")

INT_RANGES = {"INT32": (-(2**31), 2**31 - 1), "INT64": (-(2**63), 2**63 - 1)}


@dataclass
class View:
    name: str
    fv: Any  # feast.FeatureView
    value_type: str  # Feast ValueType name of the join key: INT64, INT32, STRING
    online: bool
    source: Path | None  # resolved local Parquet file or directory
    column: str  # the join key's column in the source files (after the source's field_mapping)


@dataclass
class Repo:
    store: Any  # feast.FeatureStore
    join_key: str
    views: list[View]
    online: SqliteOnline | RedisOnline | None
    level: str


def load_repo(config: FeastConfig) -> Repo:
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
    return Repo(store=store, join_key=config.entity, views=views, online=online, level=level)


def _view(target: str, fv: Any, join_key: str, repo_config: Any) -> View:
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
    return View(name=fv.name, fv=fv, value_type=value_type, online=bool(fv.online), source=source,
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


def _refuse_shared_sources(target: str, chosen: list[View], others: list[Path | None]) -> None:
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


def typed_value(text: str, value_type: str, join_key: str) -> int | str:
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
