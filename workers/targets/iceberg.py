"""Iceberg tables (pyiceberg, SQL catalog): a subject's rows leave the current snapshot, every older snapshot,
the manifests and the disk.

Data map::

    - name: faces-lake
      kind: iceberg
      catalog: {name: lake, uri: "sqlite:///lake/catalog.db", warehouse: "file:///lake/warehouse"}
      table: lake.faces                 # namespace.name; catalog: pyiceberg SQL catalog properties (name:
                                        #   the catalog's name, default "default"); PostgreSQL works via uri
      where: {owner: "{user_id}"}       # column -> template: a row matches when every column equals its value

A purge, calling the heartbeat after each stage:

1. **delete** by an ``EqualTo`` expression per column (an AND), the value typed from the column's Arrow
   type first (``parquet_files.typed_value``): an expression, never text, so a value is only ever a literal.
   pyiceberg prunes files by their manifest bounds and rewrites only the files that hold a matching row.
2. **drop the deleted entries**: the delete's snapshot keeps a manifest of ``DELETED`` entries, each with
   the removed file's column bounds (lower/upper: the subject's value, and other columns of their rows). An
   empty fast append writes a snapshot whose manifest list leaves that manifest out (pyiceberg carries over
   only manifests with live files).
3. **expire** every snapshot but the current one (a tag or branch on another snapshot is refused before
   anything is deleted: it is the user's, and it would keep the rows), then delete what only the expired
   snapshots reached: their manifest lists, manifests and data files, and every earlier metadata file. Files
   are taken from the expired snapshots themselves, never from a directory listing, so a concurrent writer's
   uncommitted files are never touched.
4. **orphans**: a data file under the table's location that no snapshot references and that holds the
   subject (a failed writer's leftover) is deleted once older than ``lake_common.ORPHAN_GRACE``, residue until then.

``verify`` counts the subject's rows in the current snapshot, in every other snapshot that can still be
read (time travel), and in every data file under the table's location the current snapshot does not
reference. ``level`` is ``bytes_reclaimed`` when, after that, no manifest of the current snapshot carries a
bound equal to the subject's value; ``invisible`` when one still does. Only local warehouses are supported:
the proof reads the files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

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

TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\.[A-Za-z_][A-Za-z0-9_]{0,127}")


class IcebergConfig(TargetConfig):
    catalog: dict[str, str] = Field(description="pyiceberg SQL catalog properties: uri (SQLAlchemy URL), warehouse.")
    table: str = Field(description="namespace.name of the table.")
    where: Where

    template_fields: ClassVar[tuple[str, ...]] = ("where",)

    @field_validator("catalog")
    @classmethod
    def _sql_catalog(cls, catalog: dict[str, str]) -> dict[str, str]:
        if not catalog.get("uri"):
            raise ValueError("catalog needs uri: the SQL catalog's database (sqlite:///… or postgresql://…)")
        if catalog.get("type", "sql") != "sql":
            raise ValueError("only pyiceberg's SQL catalog is supported (type: sql)")
        return catalog

    @field_validator("table")
    @classmethod
    def _plain_table(cls, table: str) -> str:
        if not TABLE.fullmatch(table):
            raise ValueError("table must be namespace.name (letters, digits, _)")
        return table


def _local(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise PermanentError("Iceberg table location is not local; only local warehouses are supported")
    return os.path.realpath(unquote(parsed.path) if parsed.scheme else uri)


class IcebergTarget:
    kind: ClassVar[str] = "iceberg"
    Config: ClassVar[type[TargetConfig]] = IcebergConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"snapshots", "expire_snapshots", "file_scan"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (TimeoutError, ConnectionError)
    level = "bytes_reclaimed"

    def __init__(self, config: IcebergConfig):
        self.config = config
        self.where = f"Iceberg target {config.name!r}"
        self._catalog: Any = None
        self.files_rewritten = 0  # data files the last delete removed or rewrote, of files_total
        self.files_total = 0

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        with vendor_errors(f"{self.where}: count"), self._connected():
            table = self._table()
            return self._count_snapshot(table, self._values(subject, table), None)

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        with vendor_errors(f"{self.where}: purge"), self._connected():
            table = self._table()
            # One purge of a table at a time on this host: an expiry must not delete the files of a snapshot
            # a concurrent purge is committing on.
            with directory_lock(_local(table.location())):
                return self._purge(subject, heartbeat)

    def _purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        with vendor_errors(f"{self.where}: purge"):
            table = self._table()
            values = self._values(subject, table)
            self._refuse_pinned(table)
            removed = self._count_snapshot(table, values, None)
            before = self._data_files(table, table.current_snapshot())
            self.files_total = len(before)
            if removed:
                table.delete(self._expression(values))
                table = self._table()
            self.files_rewritten = len(before - self._data_files(table, table.current_snapshot()))
            heartbeat(removed)
            self._drop_deleted_entries(table)
            heartbeat(removed)
            self._expire(self._table())
            heartbeat(removed)
            self._remove_orphans(self._table(), values)
            heartbeat(removed)
            self.level = "invisible" if self._bounds_residue(self._table(), values) else "bytes_reclaimed"
        return removed

    def verify(self, subject: Subject) -> int:
        with vendor_errors(f"{self.where}: verify"), self._connected():
            table = self._table()
            values = self._values(subject, table)
            current = table.current_snapshot()
            found = self._count_snapshot(table, values, None)
            for snapshot in table.snapshots():
                if current is None or snapshot.snapshot_id != current.snapshot_id:
                    try:
                        found += self._count_snapshot(table, values, snapshot.snapshot_id)
                    except FileNotFoundError:
                        continue  # its files are gone: this snapshot can no longer be read
            referenced = self._data_files(table, current)
            return found + sum(n for path, n in self._file_counts(table, values) if path not in referenced)

    def probe(self, earlier: Sequence[TargetConfig]) -> list[str]:
        """``check-map --probe``: the catalog and table load, the ``where`` columns exist and can be compared,
        and no tag or branch keeps an older snapshot (a purge would refuse)."""
        try:
            with vendor_errors(f"{self.where}: probe"), self._connected():
                table = self._table()
                problems = column_problems(self.config.where, table.schema().as_arrow(), self.where)
                self._refuse_pinned(table)
        except TargetError as exc:
            return [str(exc)]
        return problems

    # -- reading ---------------------------------------------------------------------------------------
    @contextmanager
    def _connected(self) -> Iterator[None]:
        """The catalog for one call of the contract; its connection pool is closed after it (a worker builds
        a target per task, so a pool kept per instance would leave connections open on the catalog's server)."""
        from pyiceberg.catalog.sql import SqlCatalog

        from workers.targets.selectors import normal_url

        properties = {k: v for k, v in self.config.catalog.items() if k not in ("type", "name")}
        properties["uri"] = normal_url(properties["uri"])  # postgresql:// as the ledger takes it
        # The SQL catalog keys its rows by the catalog's name: the one the tables were created under.
        self._catalog = SqlCatalog(self.config.catalog.get("name", "default"), **properties)
        try:
            yield
        finally:
            self._catalog.engine.dispose()
            self._catalog = None

    def _table(self) -> Any:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self._catalog.load_table(self.config.table)
        except NoSuchTableError:
            raise PermanentError(f"{self.where}: the catalog has no table {self.config.table}") from None

    def _values(self, subject: Subject, table: Any) -> dict[str, Value]:
        return subject_values(self.config.where, subject, table.schema().as_arrow())

    @staticmethod
    def _expression(values: Mapping[str, Value]) -> Any:
        from pyiceberg.expressions import And, EqualTo

        terms = [EqualTo(column, value) for column, value in values.items()]  # type: ignore[call-arg,misc,unused-ignore]  # the stubs differ by pyiceberg version
        return terms[0] if len(terms) == 1 else And(*terms)

    def _count_snapshot(self, table: Any, values: Mapping[str, Value], snapshot_id: int | None) -> int:
        import pyarrow.compute as pc

        if table.current_snapshot() is None:
            return 0
        scan = table.scan(row_filter=self._expression(values), selected_fields=tuple(values),
                          snapshot_id=snapshot_id)
        rows = scan.to_arrow()
        return int(pc.sum(mask(rows, values)).as_py() or 0) if rows.num_rows else 0

    @staticmethod
    def _data_files(table: Any, snapshot: Any) -> set[str]:
        if snapshot is None:
            return set()
        return {_local(entry.data_file.file_path)
                for manifest in snapshot.manifests(table.io)
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)}

    def _file_counts(self, table: Any, values: Mapping[str, Value]) -> Iterator[tuple[str, int]]:
        """(file, the subject's rows in it) for every Parquet data file under the table's location."""
        for path in Location.of(_local(table.location())).files(".parquet", hidden=True):
            if "metadata" not in Path(path).relative_to(_local(table.location())).parts[:1]:
                yield path, count_in_file(local_fs(), path, values)

    # -- history -------------------------------------------------------------------------------------
    def _refuse_pinned(self, table: Any) -> None:
        current = table.current_snapshot()
        pinned = [name for name, ref in table.refs().items()
                  if name != "main" and (current is None or ref.snapshot_id != current.snapshot_id)]
        if pinned:
            raise PermanentError(f"{self.where}: a tag or branch keeps an older snapshot; expiring it would be "
                                 "the owner's call (nothing deleted)")

    @staticmethod
    def _drop_deleted_entries(table: Any) -> None:
        """An empty fast append: the new snapshot's manifest list drops manifests with no live file."""
        current = table.current_snapshot()
        if current is None or not any(not (m.has_added_files() or m.has_existing_files())
                                      for m in current.manifests(table.io)):
            return
        with table.transaction() as transaction, transaction.update_snapshot().fast_append():
            pass

    def _expire(self, table: Any) -> None:
        """Expire every snapshot but the current one; delete what only they reached, and old metadata."""
        current = table.current_snapshot()
        if current is None:
            return
        old = [s for s in table.snapshots() if s.snapshot_id != current.snapshot_id]
        keep = self._reachable(table, [current])
        doomed = self._reachable(table, old) - keep
        if old:
            table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in old]).commit()
            table = self._table()
        doomed |= {_local(entry.metadata_file) for entry in table.metadata.metadata_log}
        doomed.discard(_local(table.metadata_location))
        for path in doomed:
            Path(path).unlink(missing_ok=True)
        remove_empty_partitions(_local(table.location()), skip="metadata")

    @staticmethod
    def _reachable(table: Any, snapshots: list[Any]) -> set[str]:
        files: set[str] = set()
        for snapshot in snapshots:
            files.add(_local(snapshot.manifest_list))
            for manifest in snapshot.manifests(table.io):
                files.add(_local(manifest.manifest_path))
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                    files.add(_local(entry.data_file.file_path))
        return files

    def _remove_orphans(self, table: Any, values: Mapping[str, Value]) -> None:
        remove_orphans(self._file_counts(table, values), self._data_files(table, table.current_snapshot()))

    @staticmethod
    def _bounds_residue(table: Any, values: Mapping[str, Value]) -> int:
        """Manifest entries of the current snapshot whose lower or upper bound is the subject's value."""
        from pyiceberg.conversions import to_bytes

        current = table.current_snapshot()
        if current is None:
            return 0
        schema = table.schema()
        wanted = {schema.find_field(c).field_id: to_bytes(schema.find_field(c).field_type, v)
                  for c, v in values.items()}
        found = 0
        for manifest in current.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                bounds = (entry.data_file.lower_bounds or {}, entry.data_file.upper_bounds or {})
                found += any(b.get(field) == raw for b in bounds for field, raw in wanted.items())
        return found
