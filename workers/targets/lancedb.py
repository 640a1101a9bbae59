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
2. read, in one selector scan, how many live rows each predicate matches, the subject's vectors (kept for
   ``verify``'s nearest-neighbour check) and which fragments hold them (lancedb_fragments);
3. delete by the predicate (the count LanceDB reports is ``deleted``; a predicate matching nothing is not
   sent, since a delete matching nothing would still commit a version recording it);
4. compact only the fragments that held the subject, plus any holding bytes the selector scan cannot read
   (soft-deleted rows, dropped columns: they may be the subject's), with deletions materialised; every
   other fragment is excluded from the plan, so its files are left as they are and it is never merged
   with its neighbours: the rewrite is priced by where the subject's rows sit, not by the table;
5. remove every older version (``cleanup_old_versions(older_than=0)``), so no version still holds them;
   files of unfinished transactions are left alone here (another writer may be committing them);
6. scan the files under the table's directory (all but the data files of fragments left as they are, see
   below). LanceDB writes a delete's predicate, identifier included,
   verbatim into that version's transaction file and manifest; when the delete is the latest version
   (compaction had nothing to rewrite, e.g. the subject's rows filled whole fragments) cleanup cannot
   remove it. A hit is fixed by committing a no-op version (removing a config key that does not exist)
   and cleaning up again, unverified files included; a hit that survives fails the task.

The scan reads every file except the data files of the fragments the purge left as they are: their rows
were all live, the selector scan read each of them without a match, they store no dropped column, and
Lance data files are immutable, so those files are the ones already read (lancedb_fragments). The scan
looks for three things. The predicate texts the purge sent are only ever written by a delete:
found in any file, the erasure is incomplete. The quoted literals (``'12'``) and the raw identifier (each
filled string ``match`` value of at least ``MIN_RAW_SCAN`` bytes; shorter strings occur by chance in any
binary file, and integers are stored in binary) may also sit inside other rows: a hit in the current
version's data or index files is accepted only when live rows explain it (a string column of some row
contains it, e.g. ``jo@x.org`` inside ``mojo@x.org``); anywhere else it means the erasure is incomplete.

``verify`` counts matching rows in the current version, in every remaining version and branch, and, on
each vector column with an index, the subject's rows among the nearest neighbours of each of its own
vectors (up to ``MAX_PROBES`` per column): an index answers from its own structure, which a compaction
remaps, so the search is worth checking; without one a search is a flat scan of the live rows the count
already read (1,000 probes were ~100 s on 1M vectors, for nothing the count could miss).

``level`` is ``bytes_reclaimed`` when the scan is clean and no fragment of the current version still
carries a deletion vector: every fragment that held one of the subject's rows (or any soft-deleted row)
was rewritten without it, no version but the current one remains, and no file read by the scan holds the
predicate or an unexplained identifier. Otherwise it is ``invisible``.

Every purge rewrites the fragments that held the subject and removes all the table's older versions (time
travel ends at the purge): that is what makes the erasure physical. Only local databases are supported,
since the proof reads the files.

Where each part lives: the map entry in lancedb_config, the predicates and the ``Selector`` in
lancedb_predicates, where the subject's rows sit in lancedb_fragments, the byte scan in lancedb_scan, the
error translation in lancedb_errors; this module is the target and its stages.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, ClassVar

from orchestrator.identifiers import Subject
from workers.targets import scans
from workers.targets.base import Heartbeat, PermanentError, ScanPage, TargetConfig
from workers.targets.lancedb_config import LanceDBConfig, local_path
from workers.targets.lancedb_errors import translate
from workers.targets.lancedb_fragments import Holdings, read_holdings
from workers.targets.lancedb_predicates import Selector, subject_selector
from workers.targets.lancedb_scan import files_holding

NEIGHBOURS = 10  # results per nearest-neighbour probe
FILLER_CONFIG_KEY = "lethe.erasure"  # removed (it never exists) to commit a version without a predicate


# -- connections ---------------------------------------------------------------------------------------
_connections: dict[str, Any] = {}
_connections_lock = threading.Lock()


def connection(location: str) -> Any:
    """One LanceDB connection per database directory per process, always reading the latest version."""
    import lancedb

    path = local_path(location)
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
        self.fragments_rewritten = 0  # by the last purge (those that held the subject), of fragments_total
        self.fragments_total = 0

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

        held = self._read(table, selector)
        if self._probes_for != _key(subject) or held.probes:  # a repeated purge finds nothing: keep the first read
            self.probes, self._probes_for = held.probes, _key(subject)
        heartbeat()

        deleted = 0
        for predicate, live in zip(selector.predicates, held.live, strict=True):
            if live:  # a delete matching nothing would still commit a version recording the predicate
                with self._translate("delete"):
                    deleted += int(table.delete(predicate).num_deleted_rows)
            heartbeat()

        self.fragments_rewritten, self.fragments_total = len(held.rewrite), held.fragments
        self._compact(table, held.rewrite)
        heartbeat()
        self._cleanup(table, delete_unverified=False)
        heartbeat()

        hits = self._scan(table, selector, held.clean_files)
        heartbeat()
        if hits:
            # Usually the delete is still the latest version (nothing to compact): a version without a
            # predicate on top lets cleanup take it; unverified leftovers go too.
            self._commit_filler(table)
            self._cleanup(table, delete_unverified=True)
            hits = self._scan(table, selector, held.clean_files)
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
            # Without a vector index a search is a flat scan of the live rows the counts above already
            # read: it can find nothing they did not (and costs a scan of the table per vector).
            indexed = {column for index in table.list_indices() for column in index.columns}
            for column, vectors in probes.items():
                if column not in indexed:
                    continue
                for vector in vectors:
                    found = (table.search(vector, vector_column_name=column)
                             .limit(NEIGHBOURS).select([*selector.columns, "_distance"]).to_arrow().to_pylist())
                    residue += sum(1 for row in found if selector.owns(row))
        return residue

    def probe(self, earlier: object) -> list[str]:
        """The database directory and the table exist (``check-map --probe``): the table is opened, not
        read. A problem raises the TargetError the tasks would."""
        self._open()
        return []

    # -- stages -------------------------------------------------------------------------------------
    # -- scan (lethe replay, the resurrection watch: base.Scanned) --------------------------------
    def unscannable(self) -> str | None:
        return scans.match_unscannable(self.config, self.config.match, "rows")

    def scan(self, after: object | None, limit: int) -> ScanPage:
        column, reverse = scans.scanned_field(self.config, self.config.match, "rows")
        table = self._open()
        with self._translate("scan"):
            return scans.scan_lance(self._dataset(table), column, reverse, after, limit)

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

    def _read(self, table: Any, selector: Selector) -> Holdings:
        with self._translate("read"):
            return read_holdings(self._dataset(table), selector)

    def _compact(self, table: Any, rewrite: set[int]) -> None:
        """Rewrite the fragments in ``rewrite`` without their deleted rows; every other fragment (one
        committed since the read included) is excluded from the plan, so it is neither rewritten nor merged."""
        with self._translate("compact"):
            dataset = self._dataset(table)
            fragments = [f.fragment_id for f in dataset.get_fragments()]
            others = [f for f in fragments if f not in rewrite]
            if len(others) == len(fragments):
                return  # the subject held no fragment (any more): nothing to rewrite
            # Any deleted row makes its fragment a candidate (threshold above 0: 0 means the default 10%).
            dataset.optimize.compact_files(
                materialize_deletions=True, materialize_deletions_threshold=1e-12, excluded_fragment_ids=others
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

    def _scan(self, table: Any, selector: Selector, clean_files: frozenset[str]) -> list[str]:
        with self._translate("scan"):
            return files_holding(table, self._dataset(table), selector, skip=clean_files)

    def _selector(self, subject: Subject, table: Any) -> Selector:
        with self._translate("schema"):
            schema = table.schema
        return subject_selector(self.config, subject, schema)

    def _translate(self, operation: str) -> AbstractContextManager[None]:
        return translate(operation, self.name)


def _key(subject: Subject) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(subject.items()))
