"""The subject's rows in a Feast repo's offline store: the local Parquet files of the target's views, each
with its entity column, and how many rows of each hold the subject's value (``rewrite_without`` then removes
them, one row group at a time: ``workers/targets/parquet_files.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from orchestrator.identifiers import Subject
from workers.targets.base import Heartbeat, PermanentError
from workers.targets.feast_config import FeastConfig, entity_value
from workers.targets.feast_repo import Repo, typed_value
from workers.targets.parquet_files import Location, count_in_file, local_fs


def offline_files(repo: Repo, target: str) -> dict[Path, tuple[str, str]]:
    """Every Parquet file of the views' sources -> (entity column, Feast value type), one entry per file."""
    files: dict[Path, tuple[str, str]] = {}
    for view in repo.views:
        if view.source is None:
            continue
        for path in map(Path, Location.of(str(view.source)).files()):
            spec = (view.column, view.value_type)
            if files.setdefault(path, spec) != spec:
                raise PermanentError(
                    f"Feast target {target!r}: views read one offline file with different "
                    "entity columns or types; nothing deleted"
                )
    return files


def offline_matches(
    repo: Repo, config: FeastConfig, subject: Subject, heartbeat: Heartbeat | None = None
) -> Iterator[tuple[Path, str, int | str, int]]:
    """(file, entity column, typed value, rows holding it) for every offline file of the views."""
    for path, (column, value_type) in sorted(offline_files(repo, config.name).items()):
        value = typed_value(entity_value(config, subject), value_type, repo.join_key)
        yield path, column, value, count_in_file(local_fs(), str(path), {column: value}, heartbeat)
