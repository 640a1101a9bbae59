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
scans again from the start until the last page; ``deleted`` is the number of points removed. Purge's and
verify's reads use read consistency ``all``: a point left on any replica is residue, and a replica that
cannot answer makes the task retry. The vectors read are kept on the instance (the first ``MAX_PROBES``;
the selector count still covers every point) so ``verify`` can search with them.

Verify: residue = the points the selector still matches, united with any of the purged points that a
nearest-neighbour query with each kept vector still returns (limit 10; filtered to the purged ids on a
server; in local mode, whose search is exact, the answers are intersected with them instead). A purge
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
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets.base import (
    Heartbeat,
    PermanentError,
    RetryableError,
    TargetConfig,
    TargetError,
)
from workers.targets.selectors import KeysQuery, check_match

PAGE = 256  # points read (with vectors) and deleted per round
MAX_PROBES = 1000  # vectors kept from a purge for verify's nearest-neighbour read-back
NEIGHBOURS = 10  # limit of each read-back query
QUERY_BATCH = 64  # read-back queries sent per request
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1
CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")
FIELD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


class QdrantVacuum(BaseModel):
    """Server mode: make Qdrant's vacuum optimizer rebuild every segment that holds a deleted point."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_vectors: int = Field(100, ge=100, description="vacuum_min_vector_number set on the collection.")
    wait_seconds: float = Field(
        60.0, ge=0, le=3600, description="How long purge waits for the optimizer to finish before it "
        "reports the lower level 'invisible'."
    )


class QdrantConfig(TargetConfig):
    location: str | None = Field(None, description="Folder of a Qdrant local-mode store.")
    url: str | None = Field(None, description="Qdrant server URL (http:// or https://).")
    api_key: SecretStr | None = Field(None, description="Server API key (prefer api_key_env).")
    api_key_env: str | None = Field(None, description="Environment variable holding the server API key.")
    timeout: int = Field(30, ge=1, le=600, description="Seconds a server request may take.")
    collection: str = Field(
        validation_alias=AliasChoices("collection", "table"),
        description="Collection holding the subject's points (`table` is a synonym).",
    )
    match: dict[str, str] | None = Field(
        None, description="payload field -> templated value; a point matches when every field is equal."
    )
    ids_query: KeysQuery | None = Field(None, description="Point ids looked up in the application database.")
    vacuum: QdrantVacuum | None = Field(None, description="Server mode: trigger and await the vacuum optimizer.")

    template_fields: ClassVar[tuple[str, ...]] = ("match",)
    query_fields: ClassVar[tuple[str, ...]] = ("ids_query",)

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, name: str) -> str:
        if not COLLECTION_NAME.fullmatch(name) or ".." in name:
            raise ValueError("collection must be a plain name (letters, digits, _ . -)")
        return name

    @field_validator("location")
    @classmethod
    def _location_is_a_folder(cls, location: str | None) -> str | None:
        if location is None:
            return None
        if not location.strip() or location == ":memory:":
            raise ValueError("location must be a folder (':memory:' would be a new empty store in every worker)")
        return location

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return url

    @field_validator("match")
    @classmethod
    def _match_names_the_subject(cls, match: dict[str, str] | None) -> dict[str, str] | None:
        return check_match(match, FIELD_NAME, "payload field", "payload key (letters, digits, _ . -)")

    @model_validator(mode="after")
    def _consistent(self) -> QdrantConfig:
        if (self.location is None) == (self.url is None):
            raise ValueError("give exactly one of location (local mode) or url (server)")
        if self.match is None and self.ids_query is None:
            raise ValueError("give match, ids_query or both")
        if self.location is not None and (self.api_key or self.api_key_env or self.vacuum):
            raise ValueError("api_key, api_key_env and vacuum apply to a server url, not to local mode")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give at most one of api_key or api_key_env")
        return self

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        """A dataset (``datasets:`` in the map) is found by a literal payload match, e.g.
        ``{match: {source: okcupid-2014}}``; it replaces ``match``, and ``ids_query`` is not used for it."""
        super().check_dataset_selector(selector)
        if set(selector) != {"match"}:
            raise ValueError("a qdrant dataset selector is {match: {field: value}} only")
        match = selector["match"]
        if not isinstance(match, dict) or not match:
            raise ValueError("a dataset match must name at least one payload field")
        for field, value in match.items():
            if not isinstance(field, str) or not FIELD_NAME.fullmatch(field):
                raise ValueError(f"match field {field!r} is not a plain payload key (letters, digits, _ . -)")
            if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
                raise ValueError(f"dataset match value for {field!r} must be a non-empty string or an integer")

    def server_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise PermanentError(f"Qdrant api_key_env: environment variable {self.api_key_env} is not set")
            return key
        return None


# -- clients ----------------------------------------------------------------------------------------------
_clients: dict[tuple[str, ...], Any] = {}
_local_locks: dict[str, threading.RLock] = {}
_clients_lock = threading.Lock()


def _local_key(location: str) -> str:
    return os.path.realpath(location)


def qdrant_client(location: str | None = None, url: str | None = None, api_key: str | None = None,
                  timeout: int = 30) -> Any:
    """One client per local folder or server per process: local mode locks its folder to one client."""
    from qdrant_client import QdrantClient

    with _clients_lock:
        if location is not None:
            key: tuple[str, ...] = ("local", _local_key(location))
        else:
            assert url is not None
            secret = hashlib.sha256((api_key or "").encode()).hexdigest()
            key = ("server", url, secret, str(timeout))
        if key not in _clients:
            if location is not None:
                _clients[key] = QdrantClient(path=location)
            else:
                # No version-check thread: it only warns, from a background thread, when the server is down.
                _clients[key] = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        return _clients[key]


def _local_lock(location: str) -> threading.RLock:
    with _clients_lock:
        return _local_locks.setdefault(_local_key(location), threading.RLock())


def _reopen_local(location: str) -> Any:
    """Close the folder's cached client and open it again: memory is rebuilt from what is on disk."""
    with _clients_lock:
        old = _clients.pop(("local", _local_key(location)), None)
    if old is not None:
        old.close()
    return qdrant_client(location=location)


def close_clients() -> None:
    """Close every cached client, releasing local folders (tests, worker shutdown)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


# -- conversions --------------------------------------------------------------------------------------------
def as_int64(value: str) -> int | None:
    """The integer a canonical decimal string spells, if it fits Qdrant's int64; else None."""
    if not CANONICAL_INT.fullmatch(value) or value == "-0":
        return None
    number = int(value)
    return number if INT64[0] <= number <= INT64[1] else None


def point_id(value: Any) -> int | str:
    """A point id from the application's database: an unsigned 64-bit integer or a UUID."""
    if isinstance(value, bool):
        raise PermanentError("ids_query returned a value that is not a point id")
    if isinstance(value, int):
        if 0 <= value <= UINT64_MAX:
            return value
        raise PermanentError("ids_query returned a value that is not a point id")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        if CANONICAL_INT.fullmatch(value) and not value.startswith("-") and int(value) <= UINT64_MAX:
            return int(value)
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise PermanentError("ids_query returned a value that is not a point id")


def _schema_type(info: Any) -> str | None:
    """The data type of a payload_schema entry (PayloadIndexInfo or a bare PayloadSchemaType), as text."""
    if info is None:
        return None
    data_type = getattr(info, "data_type", info)
    return str(getattr(data_type, "value", data_type))


def field_condition(field: str, value: str, schema: Any = None) -> Any:
    """The condition matching ``field == value`` in the type the store uses for the field.

    ``schema`` is the collection's payload_schema entry for the field, or None when it has no index.
    """
    from qdrant_client import models

    def equals(v: str | int) -> Any:
        return models.FieldCondition(key=field, match=models.MatchValue(value=v))

    data_type = _schema_type(schema)
    number = as_int64(value)
    if data_type == "integer":
        if number is None:
            raise PermanentError(
                f"Qdrant payload field {field!r} is indexed as integer and the identifier is not a "
                "canonical int64: nothing selected"
            )
        return equals(number)
    if data_type in ("keyword", "uuid"):
        return equals(value)
    if data_type is not None:
        raise PermanentError(
            f"Qdrant payload field {field!r} is indexed as {data_type}; match needs a keyword, uuid or "
            "integer field"
        )
    if number is None:
        return equals(value)
    return models.Filter(should=[equals(value), equals(number)])


def _payload_value(payload: dict[str, Any] | None, field: str) -> Any:
    value: Any = payload or {}
    if field in value:
        return value[field]
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


# -- the target ---------------------------------------------------------------------------------------------
class QdrantTarget:
    kind: ClassVar[str] = "qdrant"
    Config: ClassVar[type[TargetConfig]] = QdrantConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"vectors", "nearest_neighbour_verify", "ids_query"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (
        httpx.TransportError,
        ConnectionError,
        TimeoutError,
    )

    def __init__(self, config: QdrantConfig):
        self.config = config
        self.local = config.location is not None
        self.level = "bytes_reclaimed" if self.local else "invisible"
        self._purged_ids: set[int | str] = set()
        self._probes: list[tuple[str | None, Any]] = []  # (vector name, vector) read before deleting

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        with self._session() as client:
            selector = self._selector(client, subject)
            if selector is None:
                return 0
            with self._translate("count"):
                return int(client.count(self.config.collection, count_filter=selector, exact=True).count)

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        from qdrant_client import models

        deleted = 0
        removed: set[int | str] = set()  # ids this purge deleted: selected again means the delete failed
        with self._session() as client:
            selector = self._selector(client, subject)
            heartbeat()
            if selector is None:
                return 0
            while True:
                with self._translate("scroll"):
                    records, next_offset = client.scroll(
                        self.config.collection, scroll_filter=selector, limit=PAGE, with_payload=False,
                        with_vectors=True, consistency=models.ReadConsistencyType.ALL,
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
                page = models.Filter(must=[models.HasIdCondition(has_id=ids), selector])
                with self._translate("delete"):
                    client.delete(self.config.collection, points_selector=models.FilterSelector(filter=page),
                                  wait=True, ordering=models.WriteOrdering.STRONG)
                removed.update(ids)
                self._purged_ids.update(ids)
                deleted += len(ids)
                if next_offset is None:
                    break  # that was the last page; anything selected since is residue for verify to find
            if self.local:
                self.level = self._compact_local(client)
                if deleted:
                    with self._translate("reopen"):
                        _reopen_local(self.config.location or "")
            else:
                self.level = self._vacuum_server(client, heartbeat)
        return deleted

    def verify(self, subject: Subject) -> int:
        from qdrant_client import models

        residue: set[Any] = set()
        with self._session() as client:
            selector = self._selector(client, subject)
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
        exhaustively (exact distances), so a surviving point is its own vector's nearest neighbour; the
        queries go unfiltered (local mode evaluates a filter point by point in Python, ~0.1 s per query
        on 10k points) and the answers are intersected with the purged ids.
        """
        from qdrant_client import models

        only_purged = None
        if not self.local:
            only_purged = models.Filter(must=[models.HasIdCondition(has_id=sorted(self._purged_ids, key=str))])
        found: set[Any] = set()
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

    # -- selection --------------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The cached client; a local folder's lock is held for the whole operation."""
        if self.config.location is not None:
            with _local_lock(self.config.location):
                with self._translate("open"):
                    client = qdrant_client(location=self.config.location)
                yield client
        else:
            with self._translate("open"):
                client = qdrant_client(url=self.config.url, api_key=self.config.server_api_key(),
                                       timeout=self.config.timeout)
            yield client

    def _selector(self, client: Any, subject: Subject) -> Any | None:
        """The subject's filter, or None when it selects nothing. Never an empty (match-all) filter."""
        from qdrant_client import models

        schema = self._payload_schema(client)
        parts: list[Any] = []
        if self.config.match is not None:
            values: dict[str, str] = fill(self.config.match, subject)
            conditions = []
            for field, raw in values.items():
                value = str(raw)  # a dataset's literal selector may hold an integer
                condition = field_condition(field, value, schema.get(field))
                if field not in schema and as_int64(value) is None:
                    self._refuse_unconvertible(client, field, condition)
                conditions.append(condition)
            assert conditions
            parts.append(models.Filter(must=conditions))
        # A dataset erasure replaces match with a literal one and carries no identifier for the ids query.
        if self.config.ids_query is not None and self.config.ids_query.parameters() <= set(subject):
            ids = self._query_ids(subject)
            if ids:
                parts.append(models.HasIdCondition(has_id=ids))
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0] if isinstance(parts[0], models.Filter) else models.Filter(must=parts)
        return models.Filter(should=parts)

    def _payload_schema(self, client: Any) -> dict[str, Any]:
        """The collection's payload index schema; PermanentError when the collection does not exist."""
        try:
            info = client.get_collection(self.config.collection)
        except Exception as exc:
            if _is_not_found(exc):
                raise PermanentError(f"Qdrant collection {self.config.collection} does not exist") from None
            raise _translated(exc, "get_collection", self.config.collection) from None
        return dict(info.payload_schema or {})

    def _refuse_unconvertible(self, client: Any, field: str, condition: Any) -> None:
        """No index says the field's type: a non-integer value that finds nothing in a field holding
        integers could not be converted, so it fails rather than report a silent zero."""
        from qdrant_client import models

        with self._translate("count"):
            if client.count(self.config.collection, count_filter=models.Filter(must=[condition]), exact=True).count:
                return
            has_value = models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=field))])
            sample, _ = client.scroll(self.config.collection, scroll_filter=has_value, limit=1, with_payload=True)
        if not sample:
            return
        stored = _payload_value(sample[0].payload, field)
        if isinstance(stored, list) and stored:
            stored = stored[0]
        if isinstance(stored, int) and not isinstance(stored, bool):
            raise PermanentError(
                f"Qdrant payload field {field!r} holds integers and the identifier is not a canonical int64: "
                "it cannot be converted, nothing selected"
            )

    def _query_ids(self, subject: Subject) -> list[int | str]:
        assert self.config.ids_query is not None
        ids: dict[int | str, None] = {}
        for value in self.config.ids_query.values(subject, PAGE, "ids_query"):
            ids.setdefault(point_id(value))
        return list(ids)

    def _keep_probes(self, vector: Any) -> None:
        if vector is None:
            return
        named = vector.items() if isinstance(vector, dict) else [(None, vector)]
        for using, value in named:
            if len(self._probes) >= MAX_PROBES:
                return
            if value is not None:
                self._probes.append((using, value))

    # -- making it physical -----------------------------------------------------------------------
    def _compact_local(self, client: Any) -> str:
        """VACUUM the collection's SQLite file so freed pages holding deleted points are gone."""
        name = self.config.collection
        with self._translate("get_aliases"):
            for alias in client.get_aliases().aliases:
                if alias.alias_name == name:
                    name = alias.collection_name
        storage = Path(self.config.location or "") / "collection" / name / "storage.sqlite"
        if not storage.is_file():
            return "invisible"  # a layout this adapter does not know: nothing confirmed beyond the delete
        try:
            conn = sqlite3.connect(storage, timeout=30)
            try:
                conn.execute("VACUUM")
            finally:
                conn.close()
        except sqlite3.Error:
            return "invisible"
        return "bytes_reclaimed"

    def _vacuum_server(self, client: Any, heartbeat: Heartbeat) -> str:
        """With ``vacuum`` configured: every segment holding a deletion is rebuilt; wait for the optimizer."""
        from qdrant_client import models

        vacuum = self.config.vacuum
        if vacuum is None:
            return "invisible"
        try:
            client.update_collection(
                self.config.collection,
                optimizers_config=models.OptimizersConfigDiff(
                    deleted_threshold=0.0, vacuum_min_vector_number=vacuum.min_vectors
                ),
            )
        except Exception:
            # The points are deleted; a key without rights on collection settings (or an outage now) only
            # means the vacuum is not confirmed, which the level says. Failing here would re-run the purge.
            return "invisible"
        # With deleted_threshold 0, a segment holding a deleted point needs optimizing, so it is queued or
        # running until rebuilt. Idle must be seen twice, a second apart, so a rebuild the new settings
        # have not scheduled yet is not mistaken for one that is done.
        deadline = time.monotonic() + vacuum.wait_seconds
        idle_seen = 0
        while True:
            heartbeat()
            try:
                progress = client.get_optimizations(self.config.collection, with_="queued")
            except Exception:
                return "invisible"  # a server without the optimizations API: nothing confirmed
            idle = not progress.running and progress.summary.queued_optimizations == 0
            idle_seen = idle_seen + 1 if idle else 0
            if idle_seen >= 2:
                return "unindexed"
            if time.monotonic() >= deadline:
                return "invisible"
            time.sleep(1.0)

    # -- errors -----------------------------------------------------------------------------------
    @contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        try:
            yield
        except TargetError:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                raise PermanentError(f"Qdrant collection {self.config.collection} does not exist") from None
            raise _translated(exc, operation, self.config.collection) from None


def _is_not_found(exc: BaseException) -> bool:
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    # local mode: ValueError("Collection <name> not found")
    return isinstance(exc, ValueError) and str(exc).startswith("Collection ") and str(exc).endswith(" not found")


def _translated(exc: BaseException, operation: str, collection: str) -> TargetError:
    """A vendor error as a TargetError naming the operation and a status or type, never the error's text."""
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    where = f"Qdrant {operation} on collection {collection}"
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        if status == 429 or status >= 500:
            return RetryableError(f"{where}: HTTP {status}")
        return PermanentError(f"{where}: HTTP {status}")
    if isinstance(exc, ResourceExhaustedResponse):
        return RetryableError(f"{where}: HTTP 429")
    if isinstance(exc, ResponseHandlingException):
        source = exc.source
        if isinstance(source, httpx.TransportError | ConnectionError | TimeoutError):
            return RetryableError(f"{where}: {type(source).__name__}")
        return PermanentError(f"{where}: unexpected response ({type(source).__name__})")
    if isinstance(exc, (*QdrantTarget.retryable_errors, sqlite3.OperationalError)):
        return RetryableError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, RuntimeError) and "already accessed by another instance" in str(exc):
        return RetryableError(f"{where}: the local storage folder is in use by another process")
    return PermanentError(f"{where}: {type(exc).__name__}")
