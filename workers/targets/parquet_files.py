"""Parquet files without one subject's rows: find the files, count the rows, rewrite only what holds them.

One implementation for every target that erases rows from Parquet: Feast's offline files, ``kind: parquet``
(a directory of files, local or on S3), and the data-file scans that prove a Delta or Iceberg purge.

- ``where`` values are typed first and matched in the column's own Arrow type (``parquet_values``).
- Row groups whose statistics (min/max, null counts) cannot hold the value are never decoded: a file whose
  row groups all rule the subject out is skipped, so a purge reads and rewrites only the files that hold
  the subject. Files without statistics are read.
- A rewrite encodes again only the row groups that lost rows and copies the others' bytes as they are
  (``parquet_splice``; a file it cannot splice exactly is re-encoded one row group at a time), never loading
  a large file whole, into a temporary file that then replaces the original atomically. Locally: a temp
  file beside it, fsynced, ``os.replace``, the directory fsynced and locked for the rewrite. On S3, which
  has no rename: the temp object (a hidden ``.lethe-tmp-`` name, which dataset readers skip) is written,
  copied over the original with one server-side CopyObject (atomic for readers) and deleted. Other rows
  keep their schema, values and order.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from workers.targets.base import Heartbeat, PermanentError

# The typed values and row matching live in parquet_values; imported here under their own names, so every
# lake target takes what it needs from this one module.
from workers.targets.parquet_values import COLUMN as COLUMN
from workers.targets.parquet_values import Partitions as Partitions
from workers.targets.parquet_values import Value as Value
from workers.targets.parquet_values import Values as Values
from workers.targets.parquet_values import check_where as check_where
from workers.targets.parquet_values import column_problems as column_problems
from workers.targets.parquet_values import holding_row_groups as holding_row_groups
from workers.targets.parquet_values import mask as mask
from workers.targets.parquet_values import typed_value as typed_value
from workers.targets.parquet_values import typed_values as typed_values

PARQUET_CODECS = {"UNCOMPRESSED": "none", "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli",
                  "LZ4": "lz4", "LZ4_RAW": "lz4", "ZSTD": "zstd"}
TEMP_PREFIX = ".lethe-tmp-"
# The directory name Hive, Spark, pyarrow and delta-rs give a NULL partition value: every hive reader reads
# it back as NULL, so it is never a value, even when a subject's value spells it.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


# --- where the files are ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A Parquet file or directory on a pyarrow filesystem: local, or S3 (``s3://bucket/prefix``)."""

    fs: Any  # pyarrow.fs.FileSystem
    root: str  # a path on fs: a local absolute path, or bucket/prefix
    remote: bool

    @classmethod
    def of(cls, uri: str, endpoint_url: str | None = None, region: str | None = None) -> Location:
        import pyarrow.fs as pafs

        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            options: dict[str, Any] = {"region": region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
            if endpoint_url:
                endpoint = urlparse(endpoint_url)
                options["endpoint_override"] = endpoint.netloc
                options["scheme"] = endpoint.scheme or "https"
            return cls(pafs.S3FileSystem(**options), f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"), True)
        if parsed.scheme not in ("", "file"):
            raise PermanentError(f"unsupported location scheme {parsed.scheme!r}: a local path or s3:// URI")
        path = parsed.path if parsed.scheme == "file" else uri
        return cls(pafs.LocalFileSystem(), os.path.realpath(Path(path).expanduser()), False)

    def files(self, suffix: str = "", hidden: bool = False) -> list[str]:
        """Every data file at the root: the file itself, or every file under the directory whose path has no
        part starting with ``.`` or ``_`` (what pyarrow's dataset reader reads; ``hidden``: those too), sorted."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            return [self.root]
        if info.type != pafs.FileType.Directory:
            return []  # nothing stored
        found = []
        for entry in self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True)):
            relative = entry.path[len(self.root):].lstrip("/")
            if entry.type != pafs.FileType.File or not entry.path.endswith(suffix):
                continue
            if not hidden and any(part.startswith((".", "_")) for part in relative.split("/")):
                continue
            found.append(entry.path if self.remote else os.path.realpath(entry.path))
        return sorted(set(found))

    def under(self, relative: str) -> str:
        return f"{self.root}/{relative}"


def local_fs() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


# --- counting and rewriting ----------------------------------------------------------------------------------


def partitions_of(root: str, path: str) -> dict[str, str | None]:
    """Hive-style partition values (``user_id=12/``) in a file's path below ``root``, unescaped; None for
    the NULL partition (``HIVE_NULL``)."""
    from urllib.parse import unquote

    relative = path[len(root):].strip("/").split("/")[:-1] if path.startswith(root) else []
    pairs = ((unquote(k), unquote(v)) for k, _, v in (part.partition("=") for part in relative) if _ and k)
    return {k: (None if v == HIVE_NULL else v) for k, v in pairs}


def _in_file(values: Values, names: list[str], partitions: Partitions) -> Values | None:
    """The values a file's rows must still be checked for: a column the file lacks is read from its path's
    partition values (a different value, or NULL, rules the whole file out: None), else the file lacks it
    (an error)."""
    remaining: dict[str, Value] = {}
    for column, value in values.items():
        if column in names:
            remaining[column] = value
        elif column in partitions:
            partition = partitions[column]
            if partition is None or partition != str(value):  # NULL equals no value, as in SQL
                return None
        else:
            raise PermanentError(f"a Parquet file has no column {column}")
    return remaining


def count_in_file(fs: Any, path: str, values: Values, heartbeat: Heartbeat | None = None,
                  root: str | None = None) -> int:
    """Rows holding the values, reading only their columns and only row groups whose statistics may hold
    them; with ``root``, columns a file lacks are taken from its partition directories."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    partitions = partitions_of(root, path) if root else {}
    with fs.open_input_file(path) as source, pq.ParquetFile(source) as pf:
        remaining = _in_file(values, pf.schema_arrow.names, partitions)
        if remaining is None:
            return 0
        if not remaining:
            return int(pf.metadata.num_rows)  # the partition is the subject's: every row
        found = 0
        for i in holding_row_groups(pf, remaining):
            keys = pf.read_row_group(i, columns=list(remaining))
            found += int(pc.sum(mask(keys, remaining)).as_py() or 0)
            if heartbeat is not None:
                heartbeat()
        return found


def rewrite_without(fs: Any, path: str, values: Values, heartbeat: Heartbeat, root: str | None = None) -> int:
    """Rewrite one Parquet file without the rows holding ``values``; returns how many rows went. With
    ``root``, columns a file lacks are taken from its partition directories: a file of the subject's own
    partition is deleted whole (and its directory, named after the value, once empty)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    partitions = partitions_of(root, path) if root else {}
    with fs.open_input_file(path) as source, pq.ParquetFile(source) as pf:
        remaining = _in_file(values, pf.schema_arrow.names, partitions)
        rows = int(pf.metadata.num_rows)
    if remaining is None:
        return 0
    local = isinstance(fs, pafs.LocalFileSystem)
    if not remaining:
        if local:
            with directory_lock(Path(path).parent):
                os.unlink(path)
            with suppress(OSError):
                os.rmdir(Path(path).parent)  # only when empty; its name is the subject's value
        else:
            fs.delete_file(path)
        return rows
    if local:
        return _rewrite_local(Path(path), remaining, heartbeat)
    return _rewrite_remote(fs, path, remaining, heartbeat)


def remove_empty_partitions(root: str | Path, skip: str = "") -> None:
    """Remove emptied hive partition directories (``user_id=12``: named after a value) under a local root,
    deepest first; ``skip``: a top-level directory left alone (a table's log or metadata)."""
    for directory, _subdirs, files in os.walk(root, topdown=False):
        relative = Path(directory).relative_to(root).parts
        if relative and relative[0] != skip and "=" in relative[-1] and not files:
            with suppress(OSError):  # not empty after all (a writer just added a file): keep it
                os.rmdir(directory)


@contextmanager
def directory_lock(path: str | Path) -> Iterator[None]:
    """An exclusive flock on a directory for the block: one purge of a file or table at a time on this host
    (the directory is locked, not a file whose inode a replace swaps; no lock file is left behind)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _rewrite_local(path: Path, values: Values, heartbeat: Heartbeat) -> int:
    # Two workers purging different subjects from the same file would each write a copy without only their
    # own subject, and the later replace would bring the other's rows back: one rewrite per directory.
    with directory_lock(path.parent):
        before = os.stat(path)
        if before.st_nlink > 1:
            raise PermanentError("a Parquet file has other hard links; the rows would survive there")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".lethe-tmp")
        os.close(fd)
        try:
            with open(path, "rb") as source:
                removed = _copy_without(source, tmp, values, heartbeat)
            if removed:
                _fsync(tmp)
                os.chmod(tmp, stat.S_IMODE(before.st_mode))
                with suppress(OSError):
                    os.chown(tmp, before.st_uid, before.st_gid)
                os.replace(tmp, path)
                _fsync(path.parent)
            else:
                os.unlink(tmp)  # statistics said "maybe" but no row matched: the file stays as it was
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        return removed


def _rewrite_remote(fs: Any, path: str, values: Values, heartbeat: Heartbeat) -> int:
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}"
    before = fs.get_file_info(path)
    try:
        with fs.open_input_file(path) as source, fs.open_output_stream(tmp) as sink:
            removed = _copy_without(source, sink, values, heartbeat)
        if removed:
            # S3 has no lock: a rewrite by another worker since this one read the file would be undone by
            # the copy. Refuse (retryable) when the object changed meanwhile; the window left is one call.
            now = fs.get_file_info(path)
            if (now.size, now.mtime) != (before.size, before.mtime):
                from workers.targets.base import RetryableError

                raise RetryableError("a Parquet object changed while it was rewritten; trying again later")
            fs.copy_file(tmp, path)
        return removed
    finally:
        with suppress(OSError, FileNotFoundError):
            fs.delete_file(tmp)


def _copy_without(source: Any, sink: Any, values: Values, heartbeat: Heartbeat) -> int:
    """Write ``source`` to ``sink`` without the matching rows; returns how many went (0: nothing written).

    Only the row groups whose statistics may hold the subject are decoded; a file whose footer allows it is
    spliced (``parquet_splice``: the other row groups' bytes are copied as they are, only those that lost
    rows are encoded again), any other file is streamed one row group at a time and re-encoded whole."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from workers.targets import parquet_splice

    with pq.ParquetFile(source) as pf:
        options = _writer_options(pf)
        spliced = parquet_splice.plan(source, pf.schema_arrow, options)
        if spliced is None:
            return _reencode_without(pf, sink, values, heartbeat, options)
        removed = 0
        replaced: dict[int, Any] = {}
        for i in holding_row_groups(pf, values):
            group = pf.read_row_group(i)
            hits = mask(group, values)
            found = int(pc.sum(hits).as_py() or 0)
            if found:
                replaced[i] = group.filter(pc.invert(hits))
                removed += found
            heartbeat()
        if removed:
            parquet_splice.splice(source, sink, spliced, replaced, heartbeat)
    return removed


def _reencode_without(pf: Any, sink: Any, values: Values, heartbeat: Heartbeat, options: dict[str, Any]) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    removed = 0
    holding = set(holding_row_groups(pf, values))
    writer = pq.ParquetWriter(sink, pf.schema_arrow, **options)
    try:
        for i in range(pf.num_row_groups):
            group = pf.read_row_group(i)
            if i in holding:
                hits = mask(group, values)
                found = int(pc.sum(hits).as_py() or 0)
                if found:
                    group = group.filter(pc.invert(hits))
                    removed += found
            if group.num_rows:
                writer.write_table(group, row_group_size=group.num_rows)
            heartbeat()
    finally:
        writer.close()
    return removed


def _writer_options(pf: Any) -> dict[str, Any]:
    """Keep the file's format version and per-column compression."""
    meta = pf.metadata
    options: dict[str, Any] = {}
    if meta.format_version in ("1.0", "2.4", "2.6"):
        options["version"] = meta.format_version
    if meta.num_row_groups:
        group = meta.row_group(0)
        codecs = {group.column(j).path_in_schema: PARQUET_CODECS.get(group.column(j).compression)
                  for j in range(group.num_columns)}
        if all(codecs.values()):
            options["compression"] = codecs
    return options


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




# --- errors ----------------------------------------------------------------------------------------------------

# Words in pyarrow's and the lake engines' error text (which also quotes paths, keys and predicates, so it is
# never kept) that say what happened.
_TRANSIENT = re.compile(r"NETWORK_CONNECTION|SLOW_DOWN|throttl|timed? ?out|temporar|unavailable|\b50[0-4]\b|"
                        r"connection (reset|refused|closed)|conflict|concurrent", re.IGNORECASE)
_DENIED = re.compile(r"ACCESS_DENIED|AccessDenied|Forbidden|\b403\b|permission", re.IGNORECASE)


@contextmanager
def vendor_errors(where: str) -> Iterator[None]:
    """Vendor errors become TargetErrors that name ``where`` and a short code, never a value, key or path:
    outages, throttling and commit conflicts are retryable, anything else permanent."""
    from workers.targets.base import RetryableError, SliceExpired, TargetError

    try:
        yield
    except (TargetError, SliceExpired):
        raise
    except Exception as exc:
        message = str(exc)
        if type(exc).__name__ in _COMMIT_CONFLICTS:
            raise RetryableError(f"{where}: a concurrent commit won ({type(exc).__name__}); trying again") from None
        if isinstance(exc, PermissionError) or _DENIED.search(message):
            raise PermanentError(f"{where}: permission denied") from None
        if isinstance(exc, TimeoutError | ConnectionError) or _TRANSIENT.search(message):
            raise RetryableError(f"{where}: {type(exc).__name__} (store unavailable or busy)") from None
        if isinstance(exc, FileNotFoundError):
            # A file listed a moment ago is gone: another writer compacted or replaced it. Read again.
            raise RetryableError(f"{where}: a file changed while it was read") from None
        if isinstance(exc, OSError) and exc.errno is not None and exc.errno not in _PERMANENT_ERRNOS:
            raise RetryableError(f"{where}: file error {errno.errorcode.get(exc.errno, exc.errno)}") from None
        raise PermanentError(f"{where}: {type(exc).__name__}") from None


# deltalake's and pyiceberg's "another writer committed first": the operation is safe to run again.
_COMMIT_CONFLICTS = frozenset({"CommitFailedError", "CommitFailedException", "CommitStateUnknownException"})
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR})
