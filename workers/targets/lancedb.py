"""LanceDB (local tables): a subject's rows leave the current version, every older version, and the disk.

Data map::

    - name: face-embeddings
      kind: lancedb
      location: ./vectors            # directory of the LanceDB database (a local path or file:// URI)
      table: faces                   # `collection` is accepted as a synonym
      match: {subject_id: "{user_id}"}
    - name: item-embeddings          # rows keyed by item ids looked up in the application's database
      kind: lancedb
      location: ./vectors
      table: items
      id_column: item_id             # default "id"
      ids_query:
        url: postgresql://app@db/app
        sql: "SELECT item_id FROM items WHERE owner_id = :user_id"

Selectors are turned into a SQL predicate built here, never formatted from raw input: column names must be
plain identifiers and are quoted; each value is converted to the column's Arrow type first (an integer
column takes a canonical decimal integer, anything else fails the task; a string column takes a quoted
literal with single quotes doubled; LanceDB's SQL treats backslashes literally). An identifier can only
ever compare equal to one value; it can never add a clause.

A purge goes through these stages, calling the heartbeat after each:

1. refuse if a tagged version or a branch holds the subject's rows: cleanup keeps tagged versions and
   branches, so they would keep the rows (the tag is the user's; lethe never removes it);
2. read the subject's rows with their vectors (kept for ``verify``'s nearest-neighbour check);
3. delete by the predicate (the count LanceDB reports is ``deleted``);
4. compact with deletions materialised (every fragment holding a deleted row is rewritten);
5. remove every older version (``cleanup_old_versions(older_than=0)``), so no version still holds them;
   files of unfinished transactions are left alone here (another writer may be committing them);
6. scan every file under the table's directory. LanceDB writes a delete's predicate, identifier included,
   verbatim into that version's transaction file and manifest; when the delete is the latest version
   (compaction had nothing to rewrite, e.g. the subject's rows filled whole fragments) cleanup cannot
   remove it. A hit is fixed by committing a no-op version (removing a config key that does not exist)
   and cleaning up again, unverified files included; a hit that survives fails the task.

The scan looks for three things. The predicate texts the purge sent are only ever written by a delete:
found in any file, the erasure is incomplete. The quoted literals (``'12'``) and the raw identifier (each
filled string ``match`` value of at least ``MIN_RAW_SCAN`` bytes; shorter strings occur by chance in any
binary file, and integers are stored in binary) may also sit inside other rows: a hit in the current
version's data or index files is accepted only when live rows explain it (a string column of some row
contains it, e.g. ``jo@x.org`` inside ``mojo@x.org``); anywhere else it means the erasure is incomplete.

``verify`` counts matching rows in the current version, in every remaining version and branch, and the
subject's rows among the nearest neighbours of each of its own vectors (up to ``MAX_PROBES`` per column).

``level`` is ``bytes_reclaimed`` when the scan is clean and no fragment of the current version still
carries a deletion vector (so no deleted row's bytes remain in a data file), else ``invisible``.

Every purge compacts the table and removes all its older versions (time travel ends at the purge): that is
what makes the erasure physical. Only local databases are supported, since the proof reads the files.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from pydantic import Field, field_validator, model_validator

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets.base import Heartbeat, PermanentError, RetryableError, TargetConfig
from workers.targets.selectors import KeysQuery, check_match

COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TABLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
CANONICAL_INTEGER = re.compile(r"^(0|-?[1-9][0-9]*)$")
IDS_BATCH = 500  # ids per IN (...) predicate
MAX_PROBES = 1000  # of the subject's vectors per vector column, searched for by verify()
NEIGHBOURS = 10  # results per nearest-neighbour probe
MIN_RAW_SCAN = 6  # shortest identifier the raw byte scan looks for (see the module docstring)
FILLER_CONFIG_KEY = "lethe.erasure"  # removed (it never exists) to commit a version without a predicate
SCAN_CHUNK = 64 * 1024 * 1024


def _is_local(location: str) -> bool:
    scheme = urlparse(location).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


class LanceDBConfig(TargetConfig):
    location: str = Field(min_length=1, description="Directory of the LanceDB database: a local path or file:// URI.")
    table: str = Field(description="Table holding the subject's rows (`collection` is accepted as a synonym).")
    match: dict[str, str] | None = Field(
        None, description="column -> templated value; a row matches when every column equals its value."
    )
    ids_query: KeysQuery | None = Field(
        None, description="Ids of the subject's rows from the application's database (first column)."
    )
    id_column: str = Field("id", description="Column the ids_query's ids are compared with.")

    template_fields: ClassVar[tuple[str, ...]] = ("match",)
    query_fields: ClassVar[tuple[str, ...]] = ("ids_query",)

    @model_validator(mode="before")
    @classmethod
    def _collection_is_table(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "collection" in data:
            if "table" in data:
                raise ValueError("give table or its synonym collection, not both")
            data = {("table" if k == "collection" else k): v for k, v in data.items()}
        return data

    @field_validator("location")
    @classmethod
    def _local_location(cls, location: str) -> str:
        if not _is_local(location):
            raise ValueError(
                "location must be a local directory (path or file:// URI): the erasure proof reads the table's files"
            )
        return location

    @field_validator("table")
    @classmethod
    def _plain_table(cls, table: str) -> str:
        if not TABLE.fullmatch(table) or ".." in table:
            raise ValueError("table must be a plain LanceDB table name (letters, digits, _ . -)")
        return table

    @field_validator("id_column")
    @classmethod
    def _plain_id_column(cls, column: str) -> str:
        if not COLUMN.fullmatch(column):
            raise ValueError("id_column must be a plain column name (letters, digits, _)")
        return column

    @field_validator("match")
    @classmethod
    def _match_is_safe(cls, match: dict[str, str] | None) -> dict[str, str] | None:
        return check_match(match, COLUMN, "column", "column name (letters, digits, _)")

    @model_validator(mode="after")
    def _one_selector(self) -> LanceDBConfig:
        if (self.match is None) == (self.ids_query is None):
            raise ValueError("give exactly one of match or ids_query")
        return self


# -- predicates ---------------------------------------------------------------------------------------
def quote_column(column: str) -> str:
    """A column name as a quoted SQL identifier; only plain names are accepted."""
    if not isinstance(column, str) or not COLUMN.fullmatch(column):
        raise PermanentError("LanceDB selector: a column name is not a plain identifier")
    return f"`{column}`"


def sql_literal(value: object, arrow_type: Any, column: str) -> str:
    """``value`` converted to ``arrow_type`` and written as a SQL literal, or PermanentError.

    Integers must be canonical decimal text (or ints) within the type's range: never a silent zero.
    Strings are quoted with embedded single quotes doubled. Other column types are refused.
    """
    import pyarrow.types as pat

    if pat.is_integer(arrow_type):
        if isinstance(value, bool):
            raise PermanentError(f"LanceDB selector: a value for integer column {column} is not an integer")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and CANONICAL_INTEGER.fullmatch(value):
            number = int(value)
        else:
            raise PermanentError(
                f"LanceDB selector: a value for integer column {column} is not a canonical decimal integer"
            )
        bits = arrow_type.bit_width
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if pat.is_signed_integer(arrow_type) else (0, 2**bits - 1)
        if not low <= number <= high:
            raise PermanentError(f"LanceDB selector: a value for integer column {column} is out of range")
        if number == -(2**63):  # the parser reads 9223372036854775808 before negating it, which overflows
            return "(-9223372036854775807 - 1)"
        return str(number)
    if pat.is_string(arrow_type) or pat.is_large_string(arrow_type) or _is_string_view(arrow_type):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise PermanentError(f"LanceDB selector: a value for string column {column} is not a string")
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise PermanentError(f"LanceDB selector: a value for column {column} contains control characters")
        return "'" + value.replace("'", "''") + "'"
    raise PermanentError(
        f"LanceDB selector: column {column} has type {arrow_type}; only integer and string columns can be matched"
    )


def _is_string_view(arrow_type: Any) -> bool:
    import pyarrow.types as pat

    check = getattr(pat, "is_string_view", None)
    return bool(check and check(arrow_type))


def _column_type(schema: Any, column: str, table: str) -> Any:
    index = schema.get_field_index(column)
    if index < 0:
        raise PermanentError(f"LanceDB table {table} has no column {column}")
    return schema.field(index).type


def equality_predicate(values: Mapping[str, object], schema: Any, table: str = "?") -> str:
    """``(`col` = literal) AND ...`` for every column of ``values``, typed from ``schema``."""
    if not values:
        raise PermanentError("LanceDB selector: no column to match")
    clauses = []
    for column, value in values.items():
        quoted = quote_column(column)
        clauses.append(f"({quoted} = {sql_literal(value, _column_type(schema, column, table), column)})")
    return " AND ".join(clauses)


def in_predicate(column: str, values: Sequence[object], schema: Any, table: str = "?") -> str:
    """```col` IN (literal, ...)`` typed from ``schema``."""
    if not values:
        raise PermanentError("LanceDB selector: no value to match")
    quoted = quote_column(column)
    arrow_type = _column_type(schema, column, table)
    return f"{quoted} IN ({', '.join(sql_literal(v, arrow_type, column) for v in values)})"


@dataclass
class Selector:
    """The predicates that select one subject's rows, and what the byte scan looks for."""

    predicates: list[str]
    literals: list[bytes]  # quoted literals as written into the predicates
    raw: list[bytes]  # identifier values the raw scan looks for
    match: dict[str, object] = field(default_factory=dict)  # column -> converted value (match selectors)
    id_column: str | None = None
    ids: frozenset[object] = frozenset()

    def owns(self, row: Mapping[str, Any]) -> bool:
        """Whether a row read back (e.g. a search result) is one of the subject's."""
        if self.id_column is not None:
            return row.get(self.id_column) in self.ids
        return all(row.get(column) == value for column, value in self.match.items())

    @property
    def columns(self) -> list[str]:
        return [self.id_column] if self.id_column is not None else list(self.match)


# -- connections ---------------------------------------------------------------------------------------
_connections: dict[str, Any] = {}
_connections_lock = threading.Lock()


def _local_path(location: str) -> Path:
    parsed = urlparse(location)
    raw = unquote(parsed.path) if parsed.scheme == "file" else location
    return Path(raw).expanduser().resolve()


def connection(location: str) -> Any:
    """One LanceDB connection per database directory per process, always reading the latest version."""
    import lancedb

    path = _local_path(location)
    if not path.is_dir():  # lancedb.connect would create it: a typo must not look like an empty database
        raise PermanentError("LanceDB database directory does not exist")
    key = str(path)
    with _connections_lock:
        if key not in _connections:
            _connections[key] = lancedb.connect(key, read_consistency_interval=timedelta(0))
        return _connections[key]


# -- the target ----------------------------------------------------------------------------------------
class LanceDBTarget:
    kind: ClassVar[str] = "lancedb"
    Config: ClassVar[type[TargetConfig]] = LanceDBConfig
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"versions", "compaction", "nearest_neighbour_verify", "byte_scan", "ids_query"}
    )
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (TimeoutError, ConnectionError)
    level = "bytes_reclaimed"

    def __init__(self, config: LanceDBConfig):
        self.config = config
        self.name = config.table
        # The subject's vectors as read before the last purge: column -> vectors, for verify(); only
        # used to verify the subject they were read for.
        self.probes: dict[str, list[list[float]]] = {}
        self._probes_for: tuple[tuple[str, str], ...] | None = None

    # -- the contract -------------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        table = self._open()
        selector = self._selector(subject, table)
        with self._translate("count"):
            return sum(int(table.count_rows(p)) for p in selector.predicates)

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        table = self._open()
        selector = self._selector(subject, table)
        self._refuse_pinned(table, selector, during=False)
        heartbeat()

        probes = self._read_vectors(table, selector)
        if self._probes_for != _key(subject) or probes:  # a repeated purge finds nothing: keep the first read
            self.probes, self._probes_for = probes, _key(subject)
        heartbeat()

        deleted = 0
        for predicate in selector.predicates:
            with self._translate("delete"):
                # A delete matching nothing would still commit a version recording the predicate.
                if int(table.count_rows(predicate)):
                    deleted += int(table.delete(predicate).num_deleted_rows)
            heartbeat()

        self._compact(table)
        heartbeat()
        self._cleanup(table, delete_unverified=False)
        heartbeat()

        hits = self._scan(table, selector)
        heartbeat()
        if hits:
            # Usually the delete is still the latest version (nothing to compact): a version without a
            # predicate on top lets cleanup take it; unverified leftovers go too.
            self._commit_filler(table)
            self._cleanup(table, delete_unverified=True)
            hits = self._scan(table, selector)
            heartbeat()
        if hits:
            kinds = ", ".join(sorted(set(hits)))
            raise PermanentError(
                f"LanceDB erasure incomplete on table {self.name}: after compaction and cleanup the identifier "
                f"is still on disk in {len(hits)} file(s) ({kinds})"
            )
        self._refuse_pinned(table, selector, during=True)  # a tag or branch created while we worked
        self.level = "invisible" if self._deletion_vectors_left(table) else "bytes_reclaimed"
        return deleted

    def verify(self, subject: Subject) -> int:
        table = self._open()
        selector = self._selector(subject, table)
        residue = 0
        with self._translate("verify"):
            residue += sum(int(table.count_rows(p)) for p in selector.predicates)
            dataset = self._dataset(table)
            for version in dataset.versions():
                if version["version"] == dataset.version:
                    continue
                old = dataset.checkout_version(version["version"])
                residue += sum(int(old.count_rows(p)) for p in selector.predicates)
            for name in dataset.branches.list():
                branch = table.branches.checkout(name)
                residue += sum(int(branch.count_rows(p)) for p in selector.predicates)
            probes = self.probes if self._probes_for == _key(subject) else {}
            for column, vectors in probes.items():
                for vector in vectors:
                    found = (table.search(vector, vector_column_name=column)
                             .limit(NEIGHBOURS).select([*selector.columns, "_distance"]).to_arrow().to_pylist())
                    residue += sum(1 for row in found if selector.owns(row))
        return residue

    # -- selection ----------------------------------------------------------------------------------
    def _selector(self, subject: Subject, table: Any) -> Selector:
        with self._translate("schema"):
            schema = table.schema
        if self.config.match is not None:
            filled: dict[str, str] = fill(self.config.match, subject)
            predicate = equality_predicate(filled, schema, self.name)
            converted: dict[str, object] = {}
            literals: list[bytes] = []
            raw: list[bytes] = []
            for column, value in filled.items():
                arrow_type = _column_type(schema, column, self.name)
                literal = sql_literal(value, arrow_type, column)
                if literal.startswith("'"):
                    converted[column] = value
                    literals.append(literal.encode())
                    if len(value.encode()) >= MIN_RAW_SCAN:
                        raw.append(value.encode())
                else:
                    converted[column] = int(value)
            return Selector([predicate], literals, raw, match=converted)
        ids = self._query_ids(subject, schema)
        column = self.config.id_column
        batches = [ids[i:i + IDS_BATCH] for i in range(0, len(ids), IDS_BATCH)]
        # The scan looks for the predicates (which hold the ids); item ids alone are other rows' business.
        return Selector([in_predicate(column, batch, schema, self.name) for batch in batches], [], [],
                        id_column=column, ids=frozenset(ids))

    def _query_ids(self, subject: Subject, schema: Any) -> list[object]:
        import pyarrow.types as pat

        assert self.config.ids_query is not None
        column = self.config.id_column
        integer = pat.is_integer(_column_type(schema, column, self.name))
        ids: dict[object, None] = {}  # ordered, without duplicates
        for value in self.config.ids_query.values(subject, IDS_BATCH, "ids_query"):
            if value is None or isinstance(value, bool) or not isinstance(value, int | str):
                raise PermanentError("ids_query returned a value that is not an id")
            if integer:
                if isinstance(value, str) and not CANONICAL_INTEGER.fullmatch(value):
                    raise PermanentError(f"ids_query returned an id that is not an integer for column {column}")
                value = int(value)
            else:
                value = str(value)
            ids[value] = None
        return list(ids)

    # -- stages -------------------------------------------------------------------------------------
    def _open(self) -> Any:
        db = connection(self.config.location)
        with self._translate("open"):
            return db.open_table(self.config.table)

    def _dataset(self, table: Any) -> Any:
        import lance

        return lance.dataset(table.to_lance().uri)

    def _refuse_pinned(self, table: Any, selector: Selector, during: bool) -> None:
        """A tagged version or a branch holding the subject's rows blocks erasure: cleanup keeps them."""
        with self._translate("tags"):
            dataset = self._dataset(table)
            pinned = []
            for tag, info in sorted(dataset.tags.list().items()):
                tagged = dataset.checkout_version(tag)
                if any(int(tagged.count_rows(p)) for p in selector.predicates):
                    pinned.append(f"tag {tag!r} (version {info['version']})")
            for branch_name in sorted(dataset.branches.list()):
                branch = table.branches.checkout(branch_name)
                if any(int(branch.count_rows(p)) for p in selector.predicates):
                    pinned.append(f"branch {branch_name!r}")
        if pinned:
            raise PermanentError(
                f"LanceDB table {self.name}: a tagged version blocks erasure: {', '.join(pinned)} still "
                "holds the subject's rows and cleanup never removes tagged versions or branches; "
                "delete or move the tag (or branch), then retry. Nothing was deleted by this attempt"
                if not during else
                f"LanceDB table {self.name}: a tagged version blocks erasure: {', '.join(pinned)} was "
                "created during the purge and holds the subject's rows; delete it, then retry"
            )

    def _read_vectors(self, table: Any, selector: Selector) -> dict[str, list[list[float]]]:
        import pyarrow.types as pat

        with self._translate("read"):
            schema = table.schema
            columns = [f.name for f in schema
                       if pat.is_fixed_size_list(f.type) and pat.is_floating(f.type.value_type)]
            probes: dict[str, list[list[float]]] = {c: [] for c in columns}
            if not columns:
                return {}
            dataset = self._dataset(table)
            for predicate in selector.predicates:
                rows = dataset.to_table(columns=columns, filter=predicate)
                for column in columns:
                    room = MAX_PROBES - len(probes[column])
                    if room > 0:
                        probes[column].extend(v for v in rows.column(column).to_pylist()[:room] if v is not None)
        return {c: v for c, v in probes.items() if v}

    def _compact(self, table: Any) -> None:
        with self._translate("compact"):
            # Any deleted row makes its fragment a candidate (threshold above 0: 0 means the default 10%).
            self._dataset(table).optimize.compact_files(
                materialize_deletions=True, materialize_deletions_threshold=1e-12
            )

    def _cleanup(self, table: Any, delete_unverified: bool) -> None:
        with self._translate("cleanup"):
            self._dataset(table).cleanup_old_versions(
                older_than=timedelta(0), delete_unverified=delete_unverified, error_if_tagged_old_versions=False
            )

    def _commit_filler(self, table: Any) -> None:
        """A new latest version whose transaction carries no predicate (and changes nothing)."""
        with self._translate("commit"):
            self._dataset(table).delete_config_keys([FILLER_CONFIG_KEY])

    def _deletion_vectors_left(self, table: Any) -> bool:
        with self._translate("inspect"):
            return any(f.metadata.deletion_file is not None for f in self._dataset(table).get_fragments())

    # -- the byte scan ------------------------------------------------------------------------------
    def _scan(self, table: Any, selector: Selector) -> list[str]:
        """The kind of each file under the table's directory still holding the identifier (see the module
        docstring): manifest, transaction file, data file, index file, deletion file, branch file, other."""
        exact = [p.encode() for p in selector.predicates]  # only ever written by a delete: a hit anywhere
        values = list(dict.fromkeys(selector.literals + selector.raw))  # may also sit inside other rows
        needles = exact + values
        if not needles:
            return []
        with self._translate("scan"):
            dataset = self._dataset(table)
            root = _local_path(dataset.uri)
            tracked = {row["path"]: row["type"] for row in
                       dataset.tracked_files(min_version=dataset.version).read_all().to_pylist()}
            hits: list[str] = []
            explained: dict[bytes, bool] = {}
            for path in _files(root):
                relative = path.relative_to(root).as_posix()
                found = _find(path, needles)
                if not found:
                    continue
                kind = tracked.get(relative) or _kind_of(relative)
                values_only = not any(n in found for n in exact)
                live = relative in tracked and kind in ("data file", "index file")
                if values_only and live:
                    for value in found:
                        if value not in explained:
                            explained[value] = self._explained(table, value.decode())
                    if all(explained[value] for value in found):
                        continue
                hits.append(kind)
        return hits

    def _explained(self, table: Any, value: str) -> bool:
        """Whether live rows hold ``value`` inside a string column (so those bytes are theirs)."""
        import pyarrow.types as pat

        columns = [f.name for f in table.schema
                   if (pat.is_string(f.type) or pat.is_large_string(f.type)) and COLUMN.fullmatch(f.name)]
        if not columns:
            return False
        literal = "'" + value.replace("'", "''") + "'"
        predicate = " OR ".join(f"contains({quote_column(c)}, {literal})" for c in columns)
        return int(table.count_rows(predicate)) > 0

    # -- errors -------------------------------------------------------------------------------------
    @contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """Vendor errors become TargetErrors naming the operation and a short code, never a value or path."""
        try:
            yield
        except (PermanentError, RetryableError):
            raise
        except Exception as exc:
            retryable, code = _classify(exc)
            error = RetryableError if retryable else PermanentError
            raise error(f"LanceDB {operation} on table {self.name}: {code}") from None


# Words in LanceDB's error text (which also holds predicates and paths, so it is never kept) that say
# what happened. Lance reports IO failures as OSError or RuntimeError, invalid input as ValueError.
_NOT_FOUND = re.compile(r"not found|no such file", re.IGNORECASE)
_CONFLICT = re.compile(r"conflict|retryable|concurrent", re.IGNORECASE)
_TRANSIENT = re.compile(r"\bio\b|i/o|timeout|timed out|temporar|unavailable|interrupted|too many", re.IGNORECASE)


def _classify(exc: Exception) -> tuple[bool, str]:
    """(retryable, short code) for a vendor exception."""
    message = str(exc)
    if isinstance(exc, PermissionError):
        return False, "permission denied"
    if isinstance(exc, FileNotFoundError) or _NOT_FOUND.search(message):
        return False, "not found"
    if _CONFLICT.search(message):
        return True, "commit conflict"
    if isinstance(exc, TimeoutError | ConnectionError):
        return True, type(exc).__name__
    if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and _TRANSIENT.search(message)):
        return True, f"{type(exc).__name__} (IO)"
    if isinstance(exc, ValueError):
        return False, "invalid input"
    return False, type(exc).__name__


def _key(subject: Subject) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(subject.items()))


def _files(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root, followlinks=False):
        for name in sorted(files):
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _find(path: Path, needles: list[bytes]) -> set[bytes]:
    """The needles occurring in the file, read in overlapping chunks (memory stays flat)."""
    found: set[bytes] = set()
    size = path.stat().st_size
    if size == 0:
        return found
    overlap = max(len(n) for n in needles)
    with path.open("rb") as handle:
        if size <= SCAN_CHUNK:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return {n for n in needles if view.find(n) >= 0}
        tail = b""
        while chunk := handle.read(SCAN_CHUNK):
            window = tail + chunk
            found.update(n for n in needles if n not in found and n in window)
            tail = window[-overlap:]
    return found


def _kind_of(relative: str) -> str:
    top = relative.split("/", 1)[0]
    return {
        "_versions": "manifest",
        "_transactions": "transaction file",
        "_deletions": "deletion file",
        "_indices": "index file",
        "data": "data file",
        "tree": "branch file",
        "_refs": "reference",
    }.get(top, "other")
