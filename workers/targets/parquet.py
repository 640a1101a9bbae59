"""A directory of Parquet files (local or S3): a subject's rows are rewritten out of the files that hold them.

Data map::

    - name: events-lake
      kind: parquet
      uri: ./lake/events                 # a directory or one file; or s3://bucket/prefix
      endpoint_url: http://127.0.0.1:9000  # optional, S3 only (credentials from the usual AWS variables)
      where: {user_id: "{user_id}"}      # column -> template: a row matches when every column equals its value

Every file under ``uri`` whose path has no part starting with ``.`` or ``_`` is a data file (what pyarrow's
dataset reader reads). Hive-style directories (``user_id=12/``) hold a column a file lacks: a file of the
subject's own partition is deleted whole, and its emptied directory (named after the value) with it. The
NULL partition (``user_id=__HIVE_DEFAULT_PARTITION__/``) equals no value, not even one spelling that name.
Values are typed per file from its schema (``parquet_files.typed_value``): an integer column takes a
canonical decimal integer, a string column the text; a file without a ``where`` column (in it or in its
path), or with another column type, fails the task. The rewrite is ``parquet_files``' (shared with Feast's offline
purge): only files whose row-group statistics may hold the subject are read, only those that do hold it are
rewritten, atomically, keeping every other row, its schema and order.

A purge that stops half-way (a killed worker) leaves each file either rewritten or untouched, never half
written; the next purge finds the files still holding the subject. ``verify`` counts the subject's rows in
every data file again.

Level: ``bytes_reclaimed`` for local directories and for S3 buckets without versioning (the old object is
overwritten by the copy); ``invisible`` on a versioned bucket, where the previous version of each rewritten
object still holds the rows (pair the target with an ``s3`` target on the same prefix to remove them), and
when the bucket's versioning cannot be read (boto3, the ``s3`` extra, not installed).

On S3 a rewrite cannot lock the object: a second worker rewriting the same file at the same time could
undo the first one's removal. The rewrite refuses (retryable) when the object's size or modification time
changed since it was read, which leaves a window of one request; run one purge per lake prefix at a time
(e.g. one worker on ``purge.parquet``) where that matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field, field_validator

from orchestrator.identifiers import Subject
from workers.targets.base import Heartbeat, PermanentError, TargetConfig, TargetError
from workers.targets.lake_common import Where, subject_values
from workers.targets.parquet_files import (
    Location,
    column_problems,
    count_in_file,
    partitions_of,
    rewrite_without,
    vendor_errors,
)


class ParquetConfig(TargetConfig):
    uri: str = Field(min_length=1, description="Directory (or file) of Parquet files: a local path or s3:// URI.")
    endpoint_url: str | None = Field(None, description="S3 endpoint; AWS when absent.")
    region: str | None = Field(None, description="S3 region; AWS_DEFAULT_REGION or us-east-1 when absent.")
    where: Where

    template_fields: ClassVar[tuple[str, ...]] = ("where",)

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, uri: str) -> str:
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        if scheme not in ("", "file", "s3"):
            raise ValueError("uri must be a local path, file:// or s3:// URI")
        if scheme == "s3" and not uri[len("s3://"):].split("/", 1)[0]:
            raise ValueError("an s3:// uri names a bucket: s3://bucket/prefix")
        return uri


class ParquetTarget:
    kind: ClassVar[str] = "parquet"
    Config: ClassVar[type[TargetConfig]] = ParquetConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"row_group_statistics", "s3"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (TimeoutError, ConnectionError)
    level = "bytes_reclaimed"

    def __init__(self, config: ParquetConfig):
        self.config = config
        self.where = f"Parquet target {config.name!r}"
        self._location: Location | None = None

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        return sum(n for _, n in self._holding(subject))

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        location = self._open()
        removed = 0
        with vendor_errors(f"{self.where}: purge"):
            self.level = "invisible" if location.remote and self._versioned() else "bytes_reclaimed"
            for path, found in self._holding(subject, heartbeat):
                if found:
                    removed += rewrite_without(location.fs, path, self._values(subject, path), heartbeat,
                                               root=location.root)
                heartbeat(removed)
        return removed

    def verify(self, subject: Subject) -> int:
        return self.count(subject)

    def probe(self, earlier: Sequence[TargetConfig]) -> list[str]:
        """``check-map --probe``: the location exists, and every data file has the ``where`` columns (in it
        or in its partition path) with types a value can be compared with; one line per kind of problem."""
        import pyarrow.parquet as pq

        problems: list[str] = []
        try:
            with vendor_errors(f"{self.where}: probe"):
                location = self._open()
                for path in location.files():
                    with location.fs.open_input_file(path) as source:
                        schema = pq.read_schema(source)
                    found = column_problems(self.config.where, schema, self.where,
                                            partitions_of(location.root, path))
                    problems += [p for p in found if p not in problems]
        except TargetError as exc:
            return [str(exc)]
        return problems

    # -- files ----------------------------------------------------------------------------------------
    def _open(self) -> Location:
        if self._location is None:
            import pyarrow.fs as pafs

            with vendor_errors(f"{self.where}: open"):
                location = Location.of(self.config.uri, self.config.endpoint_url, self.config.region)
                # A typo in uri must not look like an empty lake that was "erased": the directory (locally)
                # or the bucket (on S3) must exist.
                root = location.root.split("/", 1)[0] if location.remote else location.root
                if location.fs.get_file_info(root).type == pafs.FileType.NotFound:
                    raise PermanentError(f"{self.where}: the uri's {'bucket' if location.remote else 'path'} "
                                         "does not exist")
            self._location = location
        return self._location

    def _values(self, subject: Subject, path: str) -> dict[str, Any]:
        """The where values typed from this file's schema (files may differ, e.g. int32 and int64)."""
        import pyarrow.parquet as pq

        location = self._open()
        with location.fs.open_input_file(path) as source:
            schema = pq.read_schema(source)
        return subject_values(self.config.where, subject, schema, partitions_of(location.root, path))

    def _holding(self, subject: Subject, heartbeat: Heartbeat | None = None) -> list[tuple[str, int]]:
        """(file, the subject's rows in it) for every data file."""
        location = self._open()
        with vendor_errors(f"{self.where}: read"):
            return [(path, count_in_file(location.fs, path, self._values(subject, path), heartbeat,
                                         root=location.root))
                    for path in location.files()]

    def _versioned(self) -> bool:
        """Whether the bucket keeps old object versions (then a rewritten file's old bytes survive). Unknown
        (no boto3, the ``s3`` extra) counts as versioned: the level must not claim what was not checked."""
        try:
            from workers.targets.s3 import s3_client
        except ImportError:
            return True
        bucket = self.config.uri[len("s3://"):].split("/", 1)[0]
        status = s3_client(self.config.endpoint_url, self.config.region).get_bucket_versioning(Bucket=bucket)
        return status.get("Status") in ("Enabled", "Suspended")
