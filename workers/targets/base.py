"""The Target protocol every store adapter implements, its errors, and the lazy registry of kinds.

The contract is documented on the Protocol's members below; tests/contract/ checks it against every
adapter's real engine. Selector plumbing the adapters share (read-only queries into the application's
database, their engines, the ``match`` rule) lives in workers/targets/selectors.py.

Adapter modules import their engine lazily (inside methods) or cheaply at the top, because the data map
validator imports them to check their configuration; Feast, MLflow and LanceDB take seconds to import.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.identifiers import Subject
from orchestrator.templates import placeholders_in


class Heartbeat(Protocol):
    """Called by a purge at least once per page: keeps the task's lease, and with ``done`` (items removed
    so far) shows progress in status, CLI and dashboard."""

    def __call__(self, done: int | None = None) -> None: ...


@dataclass
class TaskContext:
    """What a target may need beyond its selector; passed to adapters whose ``__init__`` takes ``context``.

    ``datasets`` lists the recorded training datasets (name, digest) that hold the subject (model lineage);
    events a target emits are announced once the task's completion is recorded, in the same transaction.
    """

    request_id: str
    subject_hashes: Mapping[str, str]
    datasets: Sequence[tuple[str, str]] = ()
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append((event_type, data))


class SliceExpired(Exception):
    """Raised by a heartbeat when a resumable purge has used its time slice: the task goes back to the queue."""

    def __init__(self, done: int):
        self.done = done
        super().__init__(f"slice expired after {done} items")


class TargetError(Exception):
    """An error an adapter raises after translating its vendor's error."""

    retryable: ClassVar[bool] = False


class RetryableError(TargetError):
    """Throttling, an outage, a dropped connection: the task is retried with backoff."""

    retryable = True


class HeldError(TargetError):
    """The store refuses deletion for a legal reason (S3 Object Lock): the target is reported ``held``,
    not retried in a loop and not counted as erased. An operator's retry tries again."""


class PermanentError(TargetError):
    """Misconfiguration, missing permission, an unconvertible value: the task fails and keeps the error."""


class Backups(BaseModel):
    """A target's ``backups:``: copies of the store lethe cannot reach (AWS Backup, snapshots), which age out.
    Certificates date ``gone_by`` by them; the map is refused when they outlive the tombstones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retention_days: int = Field(ge=1, strict=True, description="Days a backup keeps what the store held.")
    note: str | None = Field(None, max_length=500, description="What the backups are, for the reader.")


class TargetConfig(BaseModel):
    """Fields every target has in the data map; each adapter extends it with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Unique target name.")
    kind: str = Field(description="Adapter kind, e.g. s3.")
    after: tuple[str, ...] = Field((), description="Targets that must complete before this one starts.")
    max_items: int | None = Field(
        None, ge=1, description="Blast radius: a purge that would remove more waits for an admin."
    )
    backups: Backups | None = Field(None, description="Copies lethe cannot reach, and how long they keep data.")
    # Set by the map for each entry of a target's ``replicas:`` (orchestrator/copies.py); never written by hand.
    replica_of: str | None = Field(None, description="The primary target this replica mirrors.")

    # Fields whose strings may hold {identifier} placeholders; only these are ever filled.
    template_fields: ClassVar[tuple[str, ...]] = ()
    # Fields holding a read-only query (selectors.KeysQuery) whose :kind parameters are bound per subject.
    query_fields: ClassVar[tuple[str, ...]] = ()

    def required_identifiers(self) -> set[str]:
        """Identifier kinds this target's selector needs; a request without one skips the target."""
        needed: set[str] = set().union(*(placeholders_in(getattr(self, f)) for f in self.template_fields))
        for name in self.query_fields:
            query = getattr(self, name)
            if query is not None:
                needed |= query.parameters()
        return needed

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        """Raise ValueError unless ``selector`` (from the map's ``datasets:``) can replace this target's
        subject selector: known fields, literal values (no placeholders), nothing empty, no query. A query
        field (``keys_query``, ``ids_query``) is refused: it is a lookup of one subject's keys, bound by the
        subject's identifiers, which a dataset request does not carry; a dataset is named by literal values."""
        unknown = set(selector) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        # name, kind, after, max_items and the copies are the target's own settings, not where its data is:
        # a dataset that could set them would rename the target, reorder it or lift its blast radius.
        settings = set(selector) & set(TargetConfig.model_fields)
        if settings:
            raise ValueError(f"{', '.join(sorted(settings))} is the target's own setting, not a selector")
        queries = set(selector) & set(self.query_fields)
        if queries:
            raise ValueError(f"{', '.join(sorted(queries))} is a per-subject lookup; a dataset selector is literal")
        if placeholders_in(selector):
            raise ValueError("dataset selectors are literal: no {identifier} placeholders")
        if any(value in ("", None, {}, []) for value in selector.values()):
            raise ValueError("a dataset selector value is empty")


def require_placeholder(field: str, value: Any) -> None:
    """The rule every subject selector obeys, checked when the map loads: a selector without an
    ``{identifier}`` placeholder would match every subject."""
    if not placeholders_in(value):
        raise ValueError(f"{field} must hold an {{identifier}} placeholder, or it would match every subject")


@runtime_checkable
class Target(Protocol):
    """One configured store a subject's data is erased from.

    An adapter is built per task from its validated ``Config`` (``__init__(config)``, or
    ``__init__(config, context)`` to receive a ``TaskContext``) and may assume the configuration passed
    the map's checks; anything only the store can tell (a missing table, a column's type) it finds out at
    run time and reports as ``PermanentError``. Every method takes a ``Subject`` whose values are already
    validated and normalised (the values hashed are the values that fill a selector).

    Errors, for every method: vendor errors are translated at the edge. "Already gone" is success;
    throttling, outages and dropped connections raise ``RetryableError`` (or a type listed in
    ``retryable_errors``) and the task is retried with backoff; a legal refusal by the store (S3 Object
    Lock) raises ``HeldError``; anything else (misconfiguration, missing permission, a value that cannot be
    converted to the store's type, a foreign key refusing a delete) raises ``PermanentError`` and the task
    fails keeping the message. Messages never contain identifiers, keys or paths: they name the operation
    and the vendor's error code.
    """

    kind: ClassVar[str]
    """The data map's ``kind:`` for this adapter, e.g. ``s3``."""
    Config: ClassVar[type[TargetConfig]]
    """The pydantic model the map's entry is validated with when the map loads."""
    capabilities: ClassVar[frozenset[str]]
    """What the adapter can do beyond the contract, e.g. ``versions`` for S3's object versions. The
    pipeline reads one: ``resumable`` (see ``purge``)."""
    retryable_errors: ClassVar[tuple[type[BaseException], ...]]
    """Vendor exception types that mean "try again later" when they escape untranslated."""
    level: str
    """How far the last purge went, recorded with the completion record and the certificate:
    ``invisible`` (no read or search returns it; bytes may remain until compaction or vacuum),
    ``unindexed`` (also out of every index), ``bytes_reclaimed`` (physically gone: no version, tombstone
    or old file holds it), and for models ``quarantined`` (kept but withdrawn from serving: no alias or
    stage, tagged with the request). An adapter that reaches a lower level only on some purges sets it on
    the instance in ``purge``; the value is read after ``purge`` returns."""

    def count(self, subject: Subject) -> int:
        """How many items a purge of ``subject`` would remove now. Deletes and changes nothing: the
        pipeline calls it for dry runs and for the blast-radius check (``max_items``) before a purge, so it
        must count exactly what ``purge`` would act on. Safe to call any number of times.

        The pipeline runs count, purge and verify of one task on one instance, so count may keep what it
        read (bounded, e.g. by ``max_items``) for a later ``purge`` of the same subject on that instance to
        act on instead of reading again (S3 keeps its listing). What it keeps must be only items the
        selector matched, used at most once; anything written after the count is then verify's residue,
        and the task is retried, never certified."""
        ...

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        """Remove every item the selector built from ``subject`` matches; return how many this call
        removed. Never removes an item the selector did not match (subject ``12`` never touches ``123``).
        After a ``count`` of the same subject on the same instance it may remove what that count kept, and
        no more (see ``count``).

        Idempotent: purging what is already gone succeeds and returns 0, so a redelivered task is harmless.
        Calls ``heartbeat(done)`` at least once per page or batch of work with the items removed so far, so a
        long purge keeps its lease and shows progress. With the ``resumable`` capability the heartbeat may
        raise ``SliceExpired`` between two batches: what was removed must stay removed, and a later call
        finishes the rest (a long purge runs as several short messages). Without it, the purge runs to the
        end in one call."""
        ...

    def verify(self, subject: Subject) -> int:
        """Read the store back and return the residue: how many of the subject's items remain (0 after a
        complete purge). Reads only, and always afresh (never from what count kept); the pipeline records a
        purge as complete only when this returns 0, and retries the task when it does not."""
        ...


@runtime_checkable
class Probed(Protocol):
    """An adapter that can check its store before any request runs (``lethe check-map --probe``)."""

    def probe(self, earlier: Sequence[TargetConfig]) -> list[str]:
        """Connect to the store and return the problems found, one line each, empty when all is well:
        unreachable, a missing table or column, data the map leaves behind (for ``sql``: tables that
        reference the target's table by foreign key with no target among ``earlier``, the targets that
        complete before this one). Reads only; never raises for a problem it can describe; never names an
        identifier."""
        ...


@dataclass(frozen=True)
class ScanPage:
    """One page of a scan: the distinct identifier values found (raw, not yet validated), how many store
    entries were read for them (object versions, rows), and where the next page starts (None: the end).
    ``next`` is the store's own position and may hold an identifier: keep it in memory only."""

    values: list[str]
    read: int
    next: object | None


@runtime_checkable
class Scanned(Protocol):
    """An adapter that can list the identifier values present in its store: ``lethe replay`` re-erases the
    tombstoned ones after a restore, the resurrection watch samples them (workers/targets/scans.py)."""

    def unscannable(self) -> str | None:
        """Why this target's configured selector cannot be scanned (one line, saying what to do instead),
        or None when it can. Reads nothing: decided from the configuration (a lookup query, a selector of
        several identifier kinds)."""
        ...

    def scan(self, after: object | None, limit: int) -> ScanPage:
        """Up to ``limit`` store entries from position ``after`` (None: the start), as the distinct values of
        the selector's one placeholder they hold: exactly the values whose filled selector matches them (a
        key under ``users/123/`` gives ``123``, never ``12``). Reads only; errors as for the Target methods;
        a value that is not a valid identifier is returned as stored (the caller validates and counts it)."""
        ...


# kind -> "module:Class". Modules are imported only when a kind is used, so `lethe status` stays instant.
BUILTIN_TARGETS: dict[str, str] = {
    "s3": "workers.targets.s3:S3Target",
    "memory": "workers.targets.memory:MemoryTarget",
    "feast": "workers.targets.feast:FeastTarget",
    "qdrant": "workers.targets.qdrant:QdrantTarget",
    "lancedb": "workers.targets.lancedb:LanceDBTarget",
    "mlflow": "workers.targets.mlflow:MLflowTarget",
    "delta": "workers.targets.delta:DeltaTarget",
    "iceberg": "workers.targets.iceberg:IcebergTarget",
    "parquet": "workers.targets.parquet:ParquetTarget",
    "sql": "workers.targets.sql:SqlTarget",
}
ENTRY_POINT_GROUP = "lethe.targets"
# kind -> (the extra that installs its engine, the top-level modules that extra provides). Checked before the
# adapter module is imported, so a map naming a kind whose extra is missing is refused when it loads, with the
# command that fixes it. Kinds not listed (memory, sql, third-party entry points) need nothing beyond the core.
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "s3": ("s3", ("boto3",)),
    "feast": ("feast", ("feast",)),
    "qdrant": ("qdrant", ("qdrant_client",)),
    "lancedb": ("lancedb", ("lancedb", "lance")),
    "mlflow": ("mlflow", ("mlflow",)),
    "delta": ("delta", ("deltalake", "pyarrow")),
    "iceberg": ("iceberg", ("pyiceberg", "pyarrow")),
    "parquet": ("parquet", ("pyarrow",)),
}


class UnknownTargetKind(LookupError):
    def __init__(self, kind: str, known: list[str]):
        hint = difflib.get_close_matches(kind, known, n=1, cutoff=0.5)  # "s4" vs "s3" scores 0.5
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (known kinds: {', '.join(known)})"
        super().__init__(f"no target adapter for kind {kind!r}{suggestion}")


class MissingExtra(UnknownTargetKind):
    """A built-in kind whose engine is not installed: the extra is named, with the command that installs it."""

    def __init__(self, kind: str, extra: str):
        LookupError.__init__(self, f"kind {kind!r} needs the {extra!r} extra, which is not installed: "
                                   f"pip install 'lethe[{extra}]'")


def known_kinds() -> dict[str, str]:
    kinds = dict(BUILTIN_TARGETS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kinds.setdefault(ep.name, ep.value)
    return kinds


_loaded: dict[str, type[Any]] = {}


def target_class(kind: str) -> type[Any]:
    """The adapter class for ``kind``, imported on first use."""
    if kind in _loaded:
        return _loaded[kind]
    kinds = known_kinds()
    if kind not in kinds:
        raise UnknownTargetKind(kind, sorted(kinds))
    extra, modules = EXTRAS.get(kind, ("", ()))
    if any(importlib.util.find_spec(module) is None for module in modules):
        raise MissingExtra(kind, extra)
    module_name, _, class_name = kinds[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    _loaded[kind] = cls
    return cls


def build_target(config: TargetConfig, context: TaskContext | None = None) -> Target:
    cls = target_class(config.kind)
    wants_context = "context" in inspect.signature(cls.__init__).parameters
    target: Target = cls(config, context=context) if wants_context else cls(config)
    return target
