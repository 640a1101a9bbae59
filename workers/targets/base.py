"""The Target protocol every store adapter implements, its errors, and the lazy registry of kinds.

Contract (tests/contract/ checks it against every adapter's real engine):

- ``count(subject)`` says how many items a purge would remove; it deletes nothing (dry runs).
- ``purge(subject, heartbeat)`` removes every item the selector built from ``subject`` matches and returns
  how many it removed. It is idempotent: purging what is already gone succeeds and returns 0. It never
  removes an item its selector did not match, and it calls ``heartbeat()`` at least once per page of work
  so a long purge keeps its lease.
- ``level`` says how far the last purge went, recorded with the completion record and certificate:
  ``invisible`` (no read or search returns it, bytes may remain until compaction), ``unindexed`` (also out
  of every index), ``bytes_reclaimed`` (physically gone: no version, tombstone or old file holds it), and
  for models ``quarantined`` (kept but withdrawn from serving: no alias or stage, tagged with the request).
  An adapter that only reaches a lower level after some purges sets it on the instance in ``purge``.
- A target with the capability ``resumable`` may be interrupted at any heartbeat (it raises SliceExpired
  there) and finished later by calling ``purge`` again: what is gone stays gone, so a long purge runs as
  several short messages. It must call ``heartbeat(done)`` with the items it removed so far.
- ``verify(subject)`` reads the store back and returns the residue: how many matching items remain.
  A purge is only recorded as complete when verify returns 0.
- Vendor errors are translated at the edge: "already gone" is success, throttling and outages raise
  ``RetryableError``, anything else raises ``PermanentError``. Messages never contain identifiers, keys or
  paths; they name the operation and the vendor's error code.

Adapter modules import their engine lazily (inside methods) or cheaply at the top, because the data map
validator imports them to check their configuration; Feast, MLflow and LanceDB take seconds to import.
"""

from __future__ import annotations

import difflib
import importlib
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


DEFAULT_MAX_ITEMS = 100_000  # blast radius of a target without max_items: more waits for an admin


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


class TargetConfig(BaseModel):
    """Fields every target has in the data map; each adapter extends it with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Unique target name.")
    kind: str = Field(description="Adapter kind, e.g. s3.")
    after: tuple[str, ...] = Field((), description="Targets that must complete before this one starts.")
    max_items: int | None = Field(
        None, ge=1, description="Blast radius: a purge that would remove more waits for an admin."
    )

    # Fields whose strings may hold {identifier} placeholders; only these are ever filled.
    template_fields: ClassVar[tuple[str, ...]] = ()

    def required_identifiers(self) -> set[str]:
        """Identifier kinds this target's selector needs; a request without one skips the target."""
        return set().union(*(placeholders_in(getattr(self, f)) for f in self.template_fields))

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        """Raise ValueError unless ``selector`` (from the map's ``datasets:``) can replace this target's
        subject selector: known fields, literal values (no placeholders), nothing empty."""
        unknown = set(selector) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
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
    """One configured store a subject's data is erased from. See the module docstring for the contract."""

    kind: ClassVar[str]
    Config: ClassVar[type[TargetConfig]]
    # What the adapter can do beyond the contract, e.g. {"versions"} for S3's object versions.
    capabilities: ClassVar[frozenset[str]]
    # Vendor exception types that mean "try again later" when they escape untranslated.
    retryable_errors: ClassVar[tuple[type[BaseException], ...]]
    # Erasure level reached by purge: "invisible", "unindexed", "bytes_reclaimed" or "quarantined" (see above).
    level: str

    def count(self, subject: Subject) -> int: ...

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int: ...

    def verify(self, subject: Subject) -> int: ...


# kind -> "module:Class". Modules are imported only when a kind is used, so `lethe status` stays instant.
BUILTIN_TARGETS: dict[str, str] = {
    "s3": "workers.targets.s3:S3Target",
    "memory": "workers.targets.memory:MemoryTarget",
    "feast": "workers.targets.feast:FeastTarget",
    "qdrant": "workers.targets.qdrant:QdrantTarget",
    "lancedb": "workers.targets.lancedb:LanceDBTarget",
    "mlflow": "workers.targets.mlflow:MLflowTarget",
}
ENTRY_POINT_GROUP = "lethe.targets"


class UnknownTargetKind(LookupError):
    def __init__(self, kind: str, known: list[str]):
        hint = difflib.get_close_matches(kind, known, n=1, cutoff=0.5)  # "s4" vs "s3" scores 0.5
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (known kinds: {', '.join(known)})"
        super().__init__(f"no target adapter for kind {kind!r}{suggestion}")


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
    module_name, _, class_name = kinds[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    _loaded[kind] = cls
    return cls


def build_target(config: TargetConfig, context: TaskContext | None = None) -> Target:
    cls = target_class(config.kind)
    wants_context = "context" in inspect.signature(cls.__init__).parameters
    target: Target = cls(config, context=context) if wants_context else cls(config)
    return target
