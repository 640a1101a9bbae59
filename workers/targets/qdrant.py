"""Qdrant: a subject's points (vectors and payload) go, then the deletion is made as physical as the mode allows.

Data map::

    - name: face-embeddings
      kind: qdrant
      location: ./vectors            # Qdrant local mode (a folder); or url: https://qdrant.internal:6333
      collection: faces              # `table` is accepted as a synonym
      match: {subject_id: "{user_id}"}
      # ids_query: {url: postgresql://app@db/app, sql: "SELECT point_id FROM faces WHERE owner_id = :user_id"}
      # api_key_env: QDRANT_API_KEY  # or api_key: ... (server mode only)
      # vacuum: {min_vectors: 100, wait_seconds: 60}   # server mode, opt-in; see "Levels"

Selectors (at least one; with both, a point goes if either selects it). A dataset erasure (``datasets:``
in the map, e.g. ``face-embeddings: {match: {source: okcupid-2014}}``) replaces ``match`` with a literal
one and leaves the ids query out.

- ``match``: payload field -> templated value; every field must be equal (AND). Filters are Qdrant's
  structured ``Filter``/``FieldCondition`` models, sent as JSON: a value is data, never filter syntax,
  so ``a:b``, ``x OR 1=1`` or ``12" OR "1"="1`` match only a payload equal to exactly that string.
- ``ids_query``: point ids looked up in the application's database (S3's ``keys_query``, reused: a single
  read-only SELECT with ``:kind`` bound parameters). Ids must be unsigned 64-bit integers or UUIDs.

A filter is never empty: an empty ``should`` or ``must`` would match every point, so a selector that
selects nothing (no match, and an ids query returning no row) short-circuits to zero without a call.

Type conversion (SPEC: "an integer payload ... never a silent zero"). For each match field:

- the collection's payload index says ``integer``: the value must be a canonical decimal integer in
  Qdrant's int64 range (``12``, ``-3``; not ``012``, ``+12``, ``12.0``) and is matched as that integer;
  anything else fails the task with PermanentError. ``keyword``/``uuid`` match the string; any other
  index type (float, bool, text, geo, datetime) is refused, since equality on it is not an identifier.
- no index on the field (always the case in local mode, which reports no payload schema): the filter
  matches the string form *or*, when the value is a canonical int64, the integer form, as a ``should``
  on the same key, so a payload stored as ``"12"`` and one stored as ``12`` both go. When the value is
  not an integer, the string form finds nothing and the field's stored values are integers (one point
  sampled), the value cannot be converted: PermanentError rather than reporting zero. (On a field that
  mixes both types this may refuse a subject who simply has no data: a failed task an operator sees,
  never a silent zero.)

Purge reads the selected points page by page (with their vectors; ``heartbeat`` once per page), deletes
each page by a filter that is the page's ids AND the selector (``wait=True``, strong write ordering), and
scans again from the start until the last page (local mode, whose folder no one else can write while the
purge holds it, reads pages of ``LOCAL_PAGE`` points, deletes each by its ids and reads on from where the
page ended: one pass over the collection per 16k of the subject's points instead of two per 256);
``deleted`` is the number of points removed. Purge's and verify's reads use read consistency ``all``: a
point left on any replica is residue, and a replica that cannot answer makes the task retry. The vectors
read are kept on the instance (the first ``MAX_PROBES``; the selector count still covers every point) so
``verify`` can search with them.

Verify: residue = the points the selector still matches, united with any of the purged points that a
nearest-neighbour query with each kept vector still returns (limit 10; filtered to the purged ids on a
server; in local mode, whose search is exact over the points it holds, the purged ids still held, asked
for directly). A purge
retried on a fresh instance has no kept vectors and verifies by the selector alone.

Levels (``self.level``, recorded with the completion record):

- Local mode keeps each collection in a SQLite file (``collection/<name>/storage.sqlite``, one pickled
  point per row); a delete removes the point's row, but SQLite leaves freed page content in the file
  unless it was built with ``secure_delete``, and the client keeps a masked copy of the point in
  memory until it is reopened. After deleting, the adapter runs ``VACUUM`` on that file (the file is
  rewritten from live rows only, no WAL is used) and, if it removed anything, reopens the client so
  its memory is rebuilt from disk and ``verify`` reads what is really stored. Level:
  ``bytes_reclaimed``; ``invisible`` if the storage file cannot be found or vacuumed. Copies below the
  file (filesystem free blocks, SSD remapping, the unlinked rollback journal) are out of any adapter's
  reach.
- Server mode: a deleted point is only marked deleted in its segment; its vector stays in the segment's
  storage and HNSW graph until the vacuum optimizer rebuilds the segment, and the WAL may still hold
  the original upsert. Level: ``invisible``. With ``vacuum`` configured, purge sets the collection's
  ``deleted_threshold`` to 0 and ``vacuum_min_vector_number`` to ``min_vectors`` (this persists: every
  later deletion in the collection also triggers a rebuild; the operator opts in) and waits up to
  ``wait_seconds`` for the optimizer to report nothing running or queued (twice, a second apart; the
  queue is the server's own estimate); only then the level is
  ``unindexed``: every segment of at least ``min_vectors`` points that held a deleted point has been
  rebuilt without it (smaller segments are not vacuumed; they are normally the plain, unindexed
  appendable ones). Never ``bytes_reclaimed``: the WAL and snapshots are outside the API's view.

Local mode locks its folder to one client per process: ``qdrant_client()`` caches one client per
location (and per server URL), and every operation on a local store holds that location's lock, so
the reopen after a purge cannot pull a client from under a concurrent target in the same process.
Call ``close_clients()`` to release the folders (tests, shutdown).

Errors: connection refused, timeouts, 429 and 5xx are RetryableError; a missing collection and other
4xx are PermanentError. Messages name the operation, the collection and a status code or exception
type, never an identifier, a payload value or the local path.

Where each part lives: the map entry in qdrant_config, the selector's filter and type conversion in
qdrant_filters, the cached clients and folder locks in qdrant_clients, the levels' VACUUM and vacuum
optimizer in qdrant_vacuum, the error translation in qdrant_errors; this module is the target itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from orchestrator.identifiers import Subject
from workers.targets import scans
from workers.targets.base import Heartbeat, RetryableError, ScanPage, TargetConfig
from workers.targets.qdrant_clients import close_clients, local_lock, qdrant_client, reopen_local
from workers.targets.qdrant_config import QdrantConfig
from workers.targets.qdrant_errors import RETRYABLE_ERRORS, translate
from workers.targets.qdrant_errors import translated as _translated
from workers.targets.qdrant_filters import subject_filter
from workers.targets.qdrant_vacuum import compact_local, vacuum_server

# Reached as attributes of this module (tests; the map validator reaches QdrantConfig through QdrantTarget).
__all__ = ["LOCAL_PAGE", "PAGE", "QdrantConfig", "QdrantTarget", "_translated", "close_clients", "qdrant_client"]

PAGE = 256  # points read (with vectors) and deleted per round
# Local mode: its scroll evaluates the filter on every point of the collection whatever the offset, so each
# page costs a pass over the collection (~40 s at 1M points); it holds every point in memory anyway.
LOCAL_PAGE = 16_384
MAX_PROBES = 1000  # vectors kept from a purge for verify's nearest-neighbour read-back
NEIGHBOURS = 10  # limit of each read-back query
QUERY_BATCH = 64  # read-back queries sent per request


# -- the target ---------------------------------------------------------------------------------------------
class QdrantTarget:
    kind: ClassVar[str] = "qdrant"
    Config: ClassVar[type[TargetConfig]] = QdrantConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"vectors", "nearest_neighbour_verify", "ids_query"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = RETRYABLE_ERRORS

    def __init__(self, config: QdrantConfig):
        self.config = config
        self.local = config.location is not None
        self.level = "bytes_reclaimed" if self.local else "invisible"
        self._purged_ids: set[int | str] = set()
        self._probes: list[tuple[str | None, Any]] = []  # (vector name, vector) read before deleting

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        with self._session() as client:
            selector = subject_filter(client, self.config, subject)
            if selector is None:
                return 0
            with self._translate("count"):
                return int(client.count(self.config.collection, count_filter=selector, exact=True).count)

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        from qdrant_client import models

        deleted = 0
        removed: set[int | str] = set()  # ids this purge deleted: selected again means the delete failed
        with self._session() as client:
            selector = subject_filter(client, self.config, subject)
            heartbeat()
            if selector is None:
                return 0
            offset = None
            while True:
                with self._translate("scroll"):
                    records, next_offset = client.scroll(
                        self.config.collection, scroll_filter=selector, limit=LOCAL_PAGE if self.local else PAGE,
                        offset=offset,
                        with_payload=False, with_vectors=True, consistency=models.ReadConsistencyType.ALL,
                    )
                heartbeat()
                if not records:
                    break
                ids = [record.id for record in records]
                if removed.intersection(ids):
                    raise RetryableError(f"Qdrant delete on collection {self.config.collection} did not take "
                                         "effect: points are still selected")
                for record in records:
                    self._keep_probes(record.vector)
                with self._translate("delete"):
                    client.delete(self.config.collection, points_selector=self._page_selector(ids, selector),
                                  wait=True, ordering=models.WriteOrdering.STRONG)
                removed.update(ids)
                self._purged_ids.update(ids)
                deleted += len(ids)
                if next_offset is None:
                    break  # that was the last page; anything selected since is residue for verify to find
                if self.local:
                    offset = next_offset  # nothing else writes the folder (see _page_selector): read on from here
            if self.local:
                self.level = compact_local(client, self.config)
                if deleted:
                    with self._translate("reopen"):
                        reopen_local(self.config.location or "")
            else:
                self.level = vacuum_server(client, self.config, heartbeat)
        return deleted

    def verify(self, subject: Subject) -> int:
        from qdrant_client import models

        residue: set[Any] = set()
        with self._session() as client:
            selector = subject_filter(client, self.config, subject)
            offset = None
            while selector is not None:
                with self._translate("scroll"):
                    records, offset = client.scroll(
                        self.config.collection, scroll_filter=selector, limit=PAGE * 4, offset=offset,
                        with_payload=False, consistency=models.ReadConsistencyType.ALL,
                    )
                residue.update(record.id for record in records)
                if offset is None:
                    break
            if self._purged_ids and self._probes:
                residue |= self._found_by_neighbours(client)
        return len(residue)

    def _found_by_neighbours(self, client: Any) -> set[Any]:
        """Purged points a nearest-neighbour query with each kept vector still returns.

        Server: the query is filtered to the purged ids, so any answer is residue. Local mode searches
        exhaustively (exact distances) over the points it holds, so a purged point a query could return is
        one it still holds, and asking for the purged ids answers the same question in one call instead of
        a scan of the collection per vector (1,000 queries on 1M points in Python).
        """
        from qdrant_client import models

        if self.local:
            ids = sorted(self._purged_ids, key=str)
            found: set[Any] = set()
            for start in range(0, len(ids), PAGE * 4):
                with self._translate("retrieve"):
                    points = client.retrieve(self.config.collection, ids=ids[start:start + PAGE * 4],
                                             with_payload=False, with_vectors=False)
                found.update(point.id for point in points)
            return found
        only_purged = None
        only_purged = models.Filter(must=[models.HasIdCondition(has_id=sorted(self._purged_ids, key=str))])
        found = set()
        for start in range(0, len(self._probes), QUERY_BATCH):
            requests = [
                models.QueryRequest(query=vector, using=using, filter=only_purged, limit=NEIGHBOURS,
                                    with_payload=False, with_vector=False)
                for using, vector in self._probes[start:start + QUERY_BATCH]
            ]
            with self._translate("query"):
                answers = client.query_batch_points(self.config.collection, requests=requests,
                                                    consistency=models.ReadConsistencyType.ALL)
            for answer in answers:
                found.update(point.id for point in answer.points if point.id in self._purged_ids)
        return found

    # -- session ----------------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The cached client; a local folder's lock is held for the whole operation."""
        if self.config.location is not None:
            with local_lock(self.config.location):
                with self._translate("open"):
                    client = qdrant_client(location=self.config.location)
                yield client
        else:
            with self._translate("open"):
                client = qdrant_client(url=self.config.url, api_key=self.config.server_api_key(),
                                       timeout=self.config.timeout)
            yield client

    def probe(self, earlier: object) -> list[str]:
        """The server (or local folder) answers and the collection exists (``check-map --probe``): its
        description is read, not its points. A problem raises the TargetError the tasks would."""
        with self._session() as client, self._translate("get collection"):
            client.get_collection(self.config.collection)
        return []

    # -- scan (lethe replay, the resurrection watch: base.Scanned) --------------------------------
    def unscannable(self) -> str | None:
        return scans.match_unscannable(self.config, self.config.match, "points")

    def scan(self, after: object | None, limit: int) -> ScanPage:
        field, reverse = scans.scanned_field(self.config, self.config.match, "points")
        with self._session() as client, self._translate("scroll"):
            return scans.scan_qdrant(client, self.config.collection, field, reverse, after, limit)

    def _page_selector(self, ids: list[Any], selector: Any) -> Any:
        """What deletes a page read by the selector.

        Server: the page's ids AND the selector, so a point changed since the read (no longer the
        subject's) stays, and the next read starts from the beginning again. Local mode: the ids alone,
        and the next read goes on from where this one stopped: the folder is locked to this process's one
        client and the purge holds its lock, so nothing has changed since the read, and a filter (or a read
        from the beginning) would make local mode evaluate the selector on every point of the collection
        again for each page, in Python (a purge of 1,000 of 100k points read the collection ~7 times).
        """
        from qdrant_client import models

        if self.local:
            return models.PointIdsList(points=ids)
        return models.FilterSelector(filter=models.Filter(must=[models.HasIdCondition(has_id=ids), selector]))

    def _keep_probes(self, vector: Any) -> None:
        if vector is None:
            return
        named = vector.items() if isinstance(vector, dict) else [(None, vector)]
        for using, value in named:
            if len(self._probes) >= MAX_PROBES:
                return
            if value is not None:
                self._probes.append((using, value))

    def _translate(self, operation: str) -> AbstractContextManager[None]:
        return translate(operation, self.config.collection)
