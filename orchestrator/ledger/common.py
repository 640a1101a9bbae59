"""The ledger's vocabulary: statuses, errors, the records it hands out (dispatches, task runs, filings,
outcomes) and the small rules every domain module shares (due dates, idempotency keys, reasons)."""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

from orchestrator.identifiers import Subject
from orchestrator.ledger import proof
from orchestrator.ledger.models import (
    Base,
    Hold,
    Request,
    Task,
)
from orchestrator.logs import mentions


class RequestStatus(StrEnum):
    """Every status a request can have (SPEC "Status object"): the one list the ledger, API and dashboard use."""

    RECEIVED = "received"
    PLANNED = "planned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ON_HOLD = "on_hold"
    AWAITING_APPROVAL = "awaiting_approval"


class TaskStatus(StrEnum):
    """Every status a task can have."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"
    AWAITING_APPROVAL = "awaiting_approval"


REQUEST_STATUSES = tuple(RequestStatus)
TASK_STATUSES = tuple(TaskStatus)
TERMINAL_TASK = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED})
PARKED_TASK = frozenset({TaskStatus.HELD, TaskStatus.AWAITING_APPROVAL})  # waits for a person: a release, an approval
DONE_TASK = frozenset({TaskStatus.COMPLETED, TaskStatus.SKIPPED})  # satisfies `after`
TERMINAL_REQUEST = frozenset({RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED})
# The erasure is owed until it completed (or the request was cancelled): a failed request still counts
# against its deadline, and is the one most likely to miss it.
FINISHED = frozenset({RequestStatus.COMPLETED, RequestStatus.CANCELLED})
# Why a claimed task did not run when its request's sealed identifiers cannot be read on this host.
UNSEALABLE = ("not started: this host cannot unseal the request's identifiers (is LETHE_SUBJECT_KEY the key the "
              "request was filed with?); it is sent again after its lease")
ID_PREFIX_MIN, SHORT_ID_MIN = 4, 8  # shortest prefix taken for a request id / shown for one (as git does)
REGIMES = {"gdpr", "ccpa"}
GENESIS_HASH = proof.GENESIS_HASH
AUDIT_LOCK_KEY = 0x1E7E_A0D1  # PostgreSQL advisory lock serialising appends to the audit chain
IDEMPOTENCY_DAYS = 30
NOTHING_MATCHED = "nothing matched: the target's selector found no item"  # the reason of a task that deleted 0
IDEMPOTENCY_KEY_MAX = 200  # characters of a caller's key; the stored form adds its namespace and owner
IDEMPOTENCY_NAMESPACES = frozenset({"api", "cli", "event", "replay"})  # replay: lethe replay, the watch
# The actor of the resurrection watch's follow-ups is this plus ":<target>": /metrics counts them by it.
RESURRECTION_ACTOR = "lethe:resurrection-watch"
EVENT_NAMESPACE = uuid.UUID("6c1e7a0e-0b5e-4c8e-9a57-00000000e7e7")  # outbound event id = uuid5(audit hash)


class LedgerError(Exception):
    """A request the ledger refuses; the message is safe to show the user."""


class UnknownRequest(LedgerError):
    pass


class InvalidInput(LedgerError):
    """A value the ledger refuses as bad input (HTTP 422, exit 2), not because of a request's state."""


class IdempotencyConflict(LedgerError):
    pass


@dataclass(frozen=True)
class Dispatch:
    """A task to hand to the broker: the message carries only the id."""

    task_id: str
    kind: str
    continuation: bool = False  # the next slice of a resumable purge, not a new attempt


@dataclass(frozen=True)
class TaskRun:
    """What a worker needs to run one task, read from the ledger when it claims the task."""

    task_id: str
    request_id: str
    target: str
    kind: str
    attempt: int
    dry_run: bool
    subject: Subject
    subject_hashes: dict[str, str]
    data_map_digest: str
    approved: bool = False  # an admin approved this task (a dataset request: its whole declared source)
    approved_items: int | None = None  # the count the admin was shown and approved; None: no limit (dataset)
    continuation: bool = False  # a later slice of a long purge (the ledger says so): not counted again
    dataset: str | None = None  # a dataset erasure: the target's selector comes from the map's datasets
    datasets: list[tuple[str, str]] = field(default_factory=list)  # recorded training sets holding the subject
    derived: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> values the identities resolved

    @property
    def raw_values(self) -> list[str]:
        """Every raw identifier value of the run (the request's and the resolved ones): never logged."""
        return [*self.subject.values(), *(v for values in self.derived.values() for v in values)]

    def approval_covers(self, items: int) -> bool:
        """An admin's approval covers a purge of this many items: only what they saw counted, no more."""
        return self.approved and (self.approved_items is None or items <= self.approved_items)


def stored_idempotency_key(namespace: str, key: str, owner: str | None = None) -> str:
    """The idempotency key as the ledger stores it: ``<namespace>:[<owner>:]<key>``. The one place a key
    gets its namespace: API keys are ``api:<token name>:<key>``, the CLI's ``cli:<key>``, events'
    ``event:<digest of source and id>``, so no caller's key can equal another caller's or an event's."""
    if namespace not in IDEMPOTENCY_NAMESPACES or (owner is not None and (not owner or ":" in owner)):
        raise ValueError(f"bad idempotency namespace {namespace!r} or owner")  # a programming error
    if not key or len(key) > IDEMPOTENCY_KEY_MAX:
        raise LedgerError(f"an idempotency key is 1 to {IDEMPOTENCY_KEY_MAX} characters")
    return ":".join([namespace, *([owner] if owner is not None else []), key])


@dataclass(frozen=True)
class PlannedTask:
    """One task of a plan (``orchestrator.planner`` makes them): the ledger records it as it is given."""

    id: str
    target: str
    kind: str
    position: int
    after: tuple[str, ...]
    status: str  # "pending", or "skipped" when the request lacks an identifier the selector needs
    reason: str | None = None


@dataclass(frozen=True)
class Filing:
    """One planned request to record: its id and tasks (the service planned them), its subject (empty for a
    dataset erasure), idempotency key and origin, and what the map's identities resolved for it: their keyed
    hashes (shown in status and certificate) and raw values (sealed like the subject's)."""

    request_id: str
    subject: Subject
    tasks: tuple[PlannedTask, ...]
    idempotency_key: str | None = None
    origin: dict[str, Any] | None = None
    derived: tuple[dict[str, str], ...] = ()
    derived_values: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """A verified purge to record: what it deleted, how far, and the events its target asked for."""

    task_id: str
    deleted: int
    level: str = "bytes_reclaimed"
    events: tuple[tuple[str, dict[str, Any]], ...] = ()
    note: str | None = None


def now() -> datetime:
    return datetime.now(UTC)


def due_date(received: datetime, regime: str) -> datetime:
    """GDPR Art. 12(3): one calendar month; CCPA: 45 days."""
    if regime == "ccpa":
        return received + timedelta(days=45)
    year, month = (received.year + 1, 1) if received.month == 12 else (received.year, received.month + 1)
    day = min(received.day, calendar.monthrange(year, month)[1])
    return received.replace(year=year, month=month, day=day)


def check_reason(reason: str, what: str, values: Iterable[str] = ()) -> None:
    """A reason goes into the audit chain, which is kept for good: it must say something, and never the
    subject's identifier (in any case or encoding) that only the hashes may stand for."""
    if not reason.strip():
        raise InvalidInput(f"{what} needs a reason")
    if mentions(reason, values):
        raise InvalidInput(f"the reason for {what} contains the subject's identifier, which the audit trail "
                          "must never keep: state the ground without it")


def shared_prefix(a: str, b: str) -> int:
    """How many leading characters two strings share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def hashes_of(request: Request) -> list[str]:
    """Every keyed hash of a request's subject: its own identifiers' and those its identities resolved (a
    hold, a tombstone or a training set recorded by user id covers a request filed by email)."""
    return [*request.subject_hashes.values(), *(d["hash"] for d in request.derived_hashes or ())]


def hold_on(holds: dict[str, Hold], subject_hashes: Iterable[str]) -> Hold | None:
    """The active hold (from ``_active_holds``) on any of these subject hashes, if one is."""
    return next((holds[h] for h in subject_hashes if h in holds), None)


def after_done(task: Task, tasks: Iterable[Task]) -> bool:
    """Every target this task runs `after` is done (completed or skipped)."""
    return not task.after or set(task.after) <= {t.target for t in tasks if t.status in DONE_TASK}


audit_hash = proof.audit_hash
record_detail = proof.record_detail


def insert_if_absent(s: Session, model: type[Base], **values: Any) -> None:
    """INSERT … ON CONFLICT DO NOTHING: concurrent writers of the same row never fail each other."""
    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    s.execute(dialect.insert(model).values(**values).on_conflict_do_nothing())




def among(s: Session, column: InstrumentedAttribute[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN values``, on PostgreSQL as ``= ANY(array)``: one parameter, so a batch's statement has the
    same text whatever its size. Then psycopg parses it once (it re-parses every statement of more than 50
    parameters, ~6% of a worker's CPU) and prepares it on the server after a few runs, which then plans it
    once, not at every batch."""
    if s.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(list(values))
