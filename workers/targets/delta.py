"""Delta Lake tables (the ``deltalake`` package): a subject's rows leave the current version, every older
version, and the transaction log.

Data map::

    - name: training-manifest
      kind: delta
      uri: ./lake/faces_manifest        # the table's directory (local)
      where: {user_id: "{user_id}"}     # column -> template: a row matches when every column equals its value

A purge, calling the heartbeat after each stage:

1. **delete** with a predicate built here from typed literals: column names are plain identifiers, double
   quoted; each value is converted to the column's type first (``parquet_files.typed_value``: an integer
   column takes a canonical decimal integer in range, anything else fails the task), strings are single
   quoted with quotes doubled (DataFusion's SQL, which delta-rs parses, has no backslash escapes; a
   backslash is refused anyway). A value can only ever compare equal; it can never add a clause.
   delta-rs prunes files by their statistics and rewrites only the files holding a matching row
   (``files_rewritten`` / ``files_total`` say how many).
2. **vacuum** with zero retention, so no older version can still read a removed file. Delta refuses a
   retention under 7 days unless told otherwise: the check protects concurrent readers of old versions and
   writers still committing against them, which an erasure must end anyway, so it is disabled explicitly.
   The vacuum is the lite kind (files the log removed), never files a concurrent writer has written and not
   yet committed; a file no version references that still holds the subject (a failed writer's leftover)
   is deleted once it is older than ``lake_common.ORPHAN_GRACE``, and counted as residue until then.
3. **the log**: a delete's ``commitInfo`` records its predicate verbatim (the subject's value), and every
   ``add`` action records min/max statistics of the subject's file (the value, and other columns of
   their rows). Both survive a vacuum, in the JSON commits. lethe writes a checkpoint of the current version
   (which holds only the current files' statistics and path-only ``remove`` tombstones) and deletes every
   commit and checkpoint before it, as ``cleanup_metadata`` would after the table's log retention (30 days
   by default): time travel ends at the purge, as LanceDB's cleanup ends it. A writer that started before the
   purge and commits after it fails its conflict check and must retry.
4. **scan**: every Parquet file under the table (``_change_data`` included, ``_delta_log`` apart) is read for
   the subject's rows, and every remaining log entry for the value (predicates, statistics, partition values).

``verify`` counts the subject's rows in the current version, in every older version that can still be
loaded (time travel over the remaining history; a version whose files were vacuumed cannot be read), and in
every data file on disk the current version does not reference (old versions' files, orphans). A row
readable in several places counts in each: the residue is 0 only when nothing reads the subject.

``level`` is ``bytes_reclaimed`` when no data file holds the subject and no remaining log entry names the
value; ``invisible`` when the log still does (the rows are gone, the value is still written down), e.g. when
a concurrent commit kept the log from being cut. Only local tables are supported: the proof reads the files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from orchestrator.identifiers import Subject
from workers.targets.base import Heartbeat, PermanentError, TargetConfig, TargetError
from workers.targets.lake_common import Where, remove_orphans, subject_values
from workers.targets.parquet_files import (
    Location,
    Value,
    column_problems,
    count_in_file,
    directory_lock,
    local_fs,
    mask,
    remove_empty_partitions,
    vendor_errors,
)

LOG = "_delta_log"


class DeltaConfig(TargetConfig):
    uri: str = Field(min_length=1, description="Directory of the Delta table (local path or file:// URI).")
    where: Where

    template_fields: ClassVar[tuple[str, ...]] = ("where",)

    @field_validator("uri")
    @classmethod
    def _local_uri(cls, uri: str) -> str:
        if "://" in uri and not uri.startswith("file://"):
            raise ValueError("uri must be a local Delta table directory (path or file:// URI): the erasure proof "
                             "reads the table's files and log")
        return uri


def quote_column(column: str) -> str:
    """A column as a DataFusion SQL identifier (``check_where`` admits plain names only)."""
    return '"' + column + '"'


def sql_literal(value: Value) -> str:
    """A typed value as a DataFusion SQL literal: an integer as decimal text, a string single-quoted."""
    if isinstance(value, int):
        return str(value) if value != -(2**63) else "(-9223372036854775807 - 1)"  # parsed before negation
    if "\\" in value:
        raise PermanentError("a Delta selector value contains a backslash")
    return "'" + value.replace("'", "''") + "'"


def predicate(values: Mapping[str, Value]) -> str:
    return " AND ".join(f"{quote_column(c)} = {sql_literal(v)}" for c, v in values.items())


class DeltaTarget:
    kind: ClassVar[str] = "delta"
    Config: ClassVar[type[TargetConfig]] = DeltaConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"versions", "vacuum", "log_cleanup", "file_scan"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (TimeoutError, ConnectionError)
    level = "bytes_reclaimed"

    def __init__(self, config: DeltaConfig):
        self.config = config
        self.where = f"Delta target {config.name!r}"
        path = config.uri.removeprefix("file://")
        self.root = Path(os.path.realpath(Path(path).expanduser()))
        self.files_rewritten = 0  # by the last purge's delete, of files_total (file pruning by statistics)
        self.files_total = 0

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        with vendor_errors(f"{self.where}: count"):
            table = self._table()
            return self._count_version(table, self._values(subject, table))

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        # One purge of a table at a time on this host: a log cut under a concurrent purge's delete would
        # take the commits its conflict check reads (other writers retry; see the module docstring).
        with vendor_errors(f"{self.where}: purge"), directory_lock(self._log_dir()):
            table = self._table()
            values = self._values(subject, table)
            self.files_total = len(table.file_uris())
            metrics = table.delete(predicate(values))
            removed = int(metrics.get("num_deleted_rows") or 0)
            self.files_rewritten = int(metrics.get("num_removed_files") or 0)
            heartbeat(removed)
            # Zero retention with the check off: see the module docstring (old versions must stop reading).
            table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
            heartbeat(removed)
            self._cut_log(table)
            heartbeat(removed)
            self._remove_orphans(table, values)
            heartbeat(removed)
            self.level = "invisible" if self._log_residue(values) else "bytes_reclaimed"
        return removed

    def verify(self, subject: Subject) -> int:
        with vendor_errors(f"{self.where}: verify"):
            table = self._table()
            values = self._values(subject, table)
            current = self._count_version(table, values)
            referenced = self._referenced(table)
            loose = sum(n for path, n in self._file_counts(values) if path not in referenced)
            return current + self._count_history(values, below=table.version()) + loose

    def probe(self, earlier: Sequence[TargetConfig]) -> list[str]:
        """``check-map --probe``: the table loads, and its ``where`` columns exist and can be compared."""
        try:
            with vendor_errors(f"{self.where}: probe"):
                schema = self._table().to_pyarrow_dataset().schema
        except TargetError as exc:
            return [str(exc)]
        return column_problems(self.config.where, schema, self.where)

    # -- reading ---------------------------------------------------------------------------------------
    def _table(self) -> Any:
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(str(self.root)):
            raise PermanentError(f"{self.where}: uri is not a Delta table")
        return DeltaTable(str(self.root))

    def _log_dir(self) -> Path:
        if not (self.root / LOG).is_dir():
            raise PermanentError(f"{self.where}: uri is not a Delta table")
        return self.root / LOG

    def _values(self, subject: Subject, table: Any) -> dict[str, Value]:
        return subject_values(self.config.where, subject, table.to_pyarrow_dataset().schema)

    @staticmethod
    def _count_version(table: Any, values: Mapping[str, Value]) -> int:
        """The subject's rows in one version: its key columns read batch by batch. (A pushed-down filter
        fails on files whose strings delta-rs wrote as string_view under a string table schema.)"""
        import pyarrow as pa
        import pyarrow.compute as pc

        found = 0
        for batch in table.to_pyarrow_dataset().to_batches(columns=list(values)):
            found += int(pc.sum(mask(pa.Table.from_batches([batch]), values)).as_py() or 0)
        return found

    def _count_history(self, values: Mapping[str, Value], below: int) -> int:
        """The subject's rows in every older version that can still be loaded and read."""
        from deltalake import DeltaTable

        found = 0
        for version in (v for v in self._versions() if v < below):
            try:
                table = DeltaTable(str(self.root), version=version)
                found += self._count_version(table, values)
            except FileNotFoundError:
                continue  # its files were vacuumed: this version can no longer be read
            except Exception as exc:
                if "not found" in str(exc).lower() or "no files in log segment" in str(exc).lower():
                    continue  # its commit was removed from the log: nothing to travel to
                raise
        return found

    def _versions(self) -> list[int]:
        names = os.listdir(self.root / LOG)
        return sorted({int(n.split(".", 1)[0]) for n in names if n.split(".", 1)[0].isdigit()})

    def _file_counts(self, values: Mapping[str, Value]) -> Iterator[tuple[str, int]]:
        """(file, the subject's rows in it) for every Parquet file under the table but its log."""
        for path in Location.of(str(self.root)).files(".parquet", hidden=True):
            if Path(path).relative_to(self.root).parts[0] != LOG:
                yield path, count_in_file(local_fs(), path, values, root=str(self.root))

    # -- the log and leftovers ---------------------------------------------------------------------
    def _cut_log(self, table: Any) -> None:
        """Checkpoint the current version and delete every commit and checkpoint before it."""
        table.update_incremental()
        table.create_checkpoint()
        current = table.version()
        for name in os.listdir(self.root / LOG):
            prefix = name.split(".", 1)[0]
            if prefix.isdigit() and int(prefix) < current:
                (self.root / LOG / name).unlink(missing_ok=True)

    def _remove_orphans(self, table: Any, values: Mapping[str, Value]) -> None:
        """Delete files no version references that hold the subject, once no writer can still be on them."""
        table.update_incremental()
        remove_orphans(self._file_counts(values), self._referenced(table))
        remove_empty_partitions(self.root, skip=LOG)

    @staticmethod
    def _referenced(table: Any) -> set[str]:
        return {os.path.realpath(uri.removeprefix("file://")) for uri in table.file_uris()}

    def _log_residue(self, values: Mapping[str, Value]) -> int:
        """Remaining log entries that name a value: in a predicate, statistics or partition values."""
        import pyarrow.parquet as pq

        found = 0
        for name in sorted(os.listdir(self.root / LOG)):
            path = self.root / LOG / name
            if name.endswith(".json"):
                for line in path.read_text(encoding="utf-8").splitlines():
                    found += _names_value(json.loads(line) if line.strip() else {}, values)
            elif name.endswith(".parquet"):
                for row in pq.read_table(path, columns=["add"]).column("add").to_pylist():
                    found += _names_value({"add": row} if row else {}, values)
        return found


def _names_value(action: Mapping[str, Any], values: Mapping[str, Value]) -> int:
    """1 when a log action names one of the subject's values, else 0."""
    info = action.get("commitInfo")
    if info:
        parameters = json.dumps(info.get("operationParameters") or {}, ensure_ascii=False)
        # The literal as a delete writes it, with no digit around it: ``12`` is not ``123`` or ``112``.
        if any(re.search(r"(?<![0-9])" + re.escape(sql_literal(v)) + r"(?![0-9])", parameters)
               for v in values.values()):
            return 1
    add = action.get("add")
    if add:
        partitions = dict(add.get("partitionValues") or {})
        stats = json.loads(add["stats"]) if add.get("stats") else {}
        for column, value in values.items():
            bounds = (stats.get("minValues", {}).get(column), stats.get("maxValues", {}).get(column))
            if partitions.get(column) == str(value) or value in bounds:
                return 1
    return 0
