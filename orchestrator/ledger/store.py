"""The ledger's operations. Every state change of a request or task happens here, in one transaction.

Methods that make work runnable return the ``Dispatch`` list to hand to the broker: callers send them only
after the transaction committed, so a message never names a task the ledger does not have. A message that
is lost (broker restart, crash before send) is sent again by ``due_for_dispatch`` once its lease runs out.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import certificates, keys
from orchestrator.certificates import rfc3339
from orchestrator.datamap import DataMap
from orchestrator.identifiers import Subject
from orchestrator.identities import Resolution
from orchestrator.ledger import proof
from orchestrator.ledger.db import WIPED_RAW_VALUES, make_engine, migrate, session_factory
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    Base,
    Certificate,
    CompletionRecord,
    DataMapSnapshot,
    Dataset,
    DatasetMember,
    DeadLetterCount,
    Hold,
    OutboxEvent,
    Request,
    SignedHead,
    Task,
    Tombstone,
)
from orchestrator.logs import mentions
from orchestrator.planner import plan
from orchestrator.times import to_utc

TERMINAL_TASK = frozenset({"completed", "failed", "skipped"})
PARKED_TASK = frozenset({"held", "awaiting_approval"})  # waits for a person: a hold's release, an approval
# Why a claimed task did not run when its request's sealed identifiers cannot be read on this host.
UNSEALABLE = ("not started: this host cannot unseal the request's identifiers (is LETHE_SUBJECT_KEY the key the "
              "request was filed with?); it is sent again after its lease")
DONE_TASK = frozenset({"completed", "skipped"})  # satisfies `after`
TERMINAL_REQUEST = frozenset({"completed", "failed", "cancelled"})
REQUEST_STATUSES = ("received", "planned", "running", "completed", "failed", "cancelled", "on_hold",
                    "awaiting_approval")
ID_PREFIX_MIN, SHORT_ID_MIN = 4, 8  # shortest prefix taken for a request id / shown for one (as git does)
REGIMES = {"gdpr", "ccpa"}
GENESIS_HASH = proof.GENESIS_HASH
AUDIT_LOCK_KEY = 0x1E7E_A0D1  # PostgreSQL advisory lock serialising appends to the audit chain
IDEMPOTENCY_DAYS = 30
NOTHING_MATCHED = "nothing matched: the target's selector found no item"  # the reason of a task that deleted 0
IDEMPOTENCY_KEY_MAX = 200  # characters of a caller's key; the stored form adds its namespace and owner
IDEMPOTENCY_NAMESPACES = frozenset({"api", "cli", "event"})
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
class Filing:
    """One request to file: its subject (empty for a dataset erasure), idempotency key and origin."""

    subject: Subject
    idempotency_key: str | None = None
    origin: dict[str, Any] | None = None
    resolution: Resolution | None = None  # the identities' results, resolved before filing


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


class Ledger:
    def __init__(self, database_url: str, subject_key: bytes, signing_key: Ed25519PrivateKey,
                 lease_seconds: int = 600):
        self.engine: Engine = make_engine(database_url)
        migrate(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.subject_key = subject_key
        self.signing_key = signing_key
        self.lease = timedelta(seconds=lease_seconds)
        seal_key = hmac.new(subject_key, b"lethe/seal/v1", hashlib.sha256).digest()
        self._aead = AESGCM(seal_key)
        self._maps: dict[str, DataMap] = {}
        proof.track_rows(self.sessions, lambda s, rows: self._audit(s, "rows.changed", None, actor="ledger",
                                                                    detail={"rows": rows}))
        with self.sessions.begin() as s:  # another key than the ledger's: KeyMismatch, nothing written
            if keys.check(s, subject_key, signing_key, self._unseal):
                self._adopt(s)

    # -- sealing raw identifiers while a request runs -----------------------------------------------
    def _seal(self, request_id: str, subject: Subject) -> bytes:
        nonce = os.urandom(12)
        plain = json.dumps(dict(subject), sort_keys=True).encode()
        return nonce + self._aead.encrypt(nonce, plain, request_id.encode())

    def _unseal(self, request_id: str, sealed: bytes) -> Subject:
        plain = self._aead.decrypt(sealed[:12], sealed[12:], request_id.encode())
        return Subject(json.loads(plain))

    def _seal_derived(self, request_id: str, values: dict[str, list[str]]) -> bytes:
        """The resolved raw values, sealed like the subject (bound to the request and to this column)."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, json.dumps(values, sort_keys=True).encode(),
                                          f"{request_id}/derived".encode())

    def _unseal_derived(self, request: Request) -> dict[str, tuple[str, ...]] | None:
        """The resolved raw values of a request (empty without any), or None when they cannot be read."""
        if not request.derived_hashes:
            return {}
        if request.sealed_derived is None:
            return None
        sealed = request.sealed_derived
        try:
            plain = self._aead.decrypt(sealed[:12], sealed[12:], f"{request.id}/derived".encode())
        except (InvalidTag, ValueError):
            return None
        return {kind: tuple(values) for kind, values in json.loads(plain).items()}

    # -- intake -------------------------------------------------------------------------------------
    def file_request(
        self,
        datamap: DataMap,
        subject: Subject,
        *,
        dry_run: bool = False,
        regime: str = "gdpr",
        idempotency_key: str | None = None,
        actor: str = "cli",
        only_targets: Collection[str] | None = None,
        origin: dict[str, Any] | None = None,
        dataset: str | None = None,
        requested_by: str | None = None,
        resolution: Resolution | None = None,
    ) -> tuple[str, bool, list[Dispatch]]:
        """Record a request and plan its tasks. Returns (id, created, dispatches).

        A replay with the same idempotency key and the same request returns the first one (created False);
        the same key with a different request raises IdempotencyConflict. ``requested_by``: the API token
        name it is filed under (a requester reads only its own requests).
        """
        filed, dispatches = self.file_requests(
            datamap, [Filing(subject, idempotency_key, origin, resolution)], dry_run=dry_run, regime=regime,
            actor=actor, only_targets=only_targets, dataset=dataset, requested_by=requested_by)
        return filed[0][0], filed[0][1], dispatches

    def file_requests(
        self,
        datamap: DataMap,
        filings: Sequence[Filing],
        *,
        dry_run: bool = False,
        regime: str = "gdpr",
        actor: str = "cli",
        only_targets: Collection[str] | None = None,
        dataset: str | None = None,
        requested_by: str | None = None,
    ) -> tuple[list[tuple[str, bool]], list[Dispatch]]:
        """Record many requests in one transaction (a bulk erasure files thousands at once). Returns
        (id, created) per filing, in order, and the dispatches of all of them.

        Idempotency as for ``file_request``: a key already used for the same request returns that request
        (created False), for another request raises IdempotencyConflict and nothing is filed.
        """
        if regime not in REGIMES:
            raise LedgerError(f"unknown regime {regime!r} (gdpr or ccpa)")
        if dataset is not None and (dataset not in datamap.datasets or any(len(f.subject) for f in filings)):
            known = ", ".join(sorted(datamap.datasets)) or "none"
            raise LedgerError(f"unknown dataset {dataset!r} (the data map declares: {known})")
        prepared = []
        for filing in filings:
            hashes = filing.subject.hashes(self.subject_key)
            digest = hashlib.sha256(
                json.dumps({"subject": hashes, "dataset": dataset, "dry_run": dry_run, "regime": regime,
                            "targets": sorted(only_targets) if only_targets is not None else None},
                           sort_keys=True).encode()
            ).hexdigest()
            prepared.append((filing, hashes, digest))
        keyed = [(f.idempotency_key, digest) for f, _, digest in prepared if f.idempotency_key is not None]
        for attempt in (1, 2):
            replays = self._replays(keyed)
            try:
                return self._file(datamap, prepared, replays, dry_run=dry_run, regime=regime, actor=actor,
                                  only_targets=only_targets, dataset=dataset, requested_by=requested_by)
            except IntegrityError:
                if not keyed or attempt == 2:  # lost a race with the same key: the replay finds it next time
                    raise
        raise AssertionError("unreachable")

    def _file(self, datamap: DataMap, prepared: list[tuple[Filing, dict[str, str], str]], replays: dict[str, str],
              *, dry_run: bool, regime: str, actor: str, only_targets: Collection[str] | None,
              dataset: str | None, requested_by: str | None) -> tuple[list[tuple[str, bool]], list[Dispatch]]:
        filed: list[tuple[str, bool]] = []
        dispatches: list[Dispatch] = []
        received = now()
        with self.sessions.begin() as s:
            _insert_if_absent(s, DataMapSnapshot, digest=datamap.digest, text=datamap.text, created_at=received)
            derived = {id(f): f.resolution.derived(self.subject_key) if f.resolution else [] for f, _, _ in prepared}
            holds = self._active_holds(s, [h for f, hashes, _ in prepared
                                           for h in [*hashes.values(), *(d["hash"] for d in derived[id(f)])]])
            for filing, hashes, digest in prepared:
                key = filing.idempotency_key
                if key is not None and key in replays:
                    filed.append((replays[key], False))
                    continue
                request_id = str(uuid.uuid4())
                request = Request(
                    id=request_id,
                    scope="dataset" if dataset is not None else "subject",
                    dataset=dataset,
                    status="planned",
                    dry_run=dry_run,
                    regime=regime,
                    received_at=received,
                    due_at=due_date(received, regime),
                    data_map_digest=datamap.digest,
                    subject_hashes=hashes,
                    sealed_subject=self._seal(request_id, filing.subject),
                    derived_hashes=derived[id(filing)] or None,
                    sealed_derived=self._seal_derived(request_id, filing.resolution.sealable())
                    if derived[id(filing)] and filing.resolution else None,
                    idempotency_key=key,
                    idempotency_digest=digest if key else None,
                    actor=actor,
                    requested_by=requested_by,
                )
                s.add(request)
                if key is not None:
                    replays[key] = request_id  # the same key twice in one batch is a replay too
                self._audit(s, "request.received", request_id, actor=actor,
                            detail={"subject_hashes": hashes, "dataset": dataset, "dry_run": dry_run,
                                    "regime": regime, "data_map_digest": datamap.digest, **(filing.origin or {}),
                                    **({"derived": derived[id(filing)]} if derived[id(filing)] else {})})
                tasks = [Task(id=p.id, request_id=request_id, target=p.target, kind=p.kind, position=p.position,
                              after=list(p.after), status=p.status, reason=p.reason, attempts=0,
                              carried_deleted=0, finished_at=received if p.status == "skipped" else None)
                         for p in plan(request_id, datamap, filing.subject, only=only_targets, dataset=dataset,
                                       resolution=filing.resolution)]
                tasks.sort(key=lambda t: t.position)
                s.add_all(tasks)
                self._audit(s, "request.planned", request_id, actor=actor,
                            detail={"targets": [t.target for t in tasks]})
                hold = _hold_on(holds, _hashes_of(request))
                pending = [t for t in tasks if t.status == "pending"]
                if hold is not None:
                    self._park(s, request, pending, "held", f"legal hold: {hold.reason}", actor=actor, tasks=tasks)
                elif dataset is not None and not dry_run:  # a whole source goes only with an admin's approval
                    self._park(s, request, pending, "awaiting_approval",
                               "a dataset erasure waits for an admin's approval", actor=actor, tasks=tasks)
                dispatches += self._release_ready(s, request, tasks)
                self._refresh(s, request, actor=actor, tasks=tasks)
                filed.append((request_id, True))
        return filed, dispatches

    def _replays(self, keyed: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Idempotency key -> the request filed with it; a key used for a different request is a conflict."""
        if not keyed:
            return {}
        with self.sessions() as s:
            rows = s.execute(select(Request.idempotency_key, Request.idempotency_digest, Request.id)
                             .where(Request.idempotency_key.in_({k for k, _ in keyed}))).all()
        known = {key: (digest, request_id) for key, digest, request_id in rows}
        replays: dict[str, str] = {}
        for key, digest in keyed:
            if key in known:
                if known[key][0] != digest:
                    raise IdempotencyConflict("this idempotency key was already used for a different request")
                replays[key] = known[key][1]
        return replays

    # -- workers ------------------------------------------------------------------------------------
    def claim(self, task_id: str) -> TaskRun | None:
        """Mark a task running and return what it needs, or None when there is nothing to do (finished,
        cancelled, waiting for `after`, or held)."""
        runs = self.claim_many([task_id])
        return runs[0] if runs else None

    def claim_many(self, task_ids: Sequence[str]) -> list[TaskRun]:
        """Mark tasks running and return what each needs, in one transaction; a task with nothing to do
        (finished, cancelled, waiting for `after`, parked, or its subject held) is left out.

        Whether a claim continues a sliced purge (and so skips the count) is read from the task's row, set by
        ``hand_back``: what a broker message claims about itself is never trusted."""
        with self.sessions.begin() as s:
            # Rows are locked in id order (tasks, then requests) by every batch operation: no deadlocks.
            live = [t for t in s.scalars(select(Task).where(Task.id.in_(set(task_ids))).order_by(Task.id)
                                         .with_for_update()) if t.status not in TERMINAL_TASK]
            if not live:
                return []
            requests = self._lock_requests(s, {t.request_id for t in live})
            siblings = self._tasks_of(s, requests)
            holds = self._active_holds(s, [h for r in requests.values() for h in _hashes_of(r)])
            datasets = self._datasets_of(s, [h for r in requests.values() for h in _hashes_of(r)])
            order = {task_id: n for n, task_id in enumerate(task_ids)}
            at = now()
            runs = []
            for task in sorted(live, key=lambda t: order[t.id]):
                request = requests[task.request_id]
                tasks = siblings[request.id]
                if request.status in TERMINAL_REQUEST:
                    continue
                if task.status in PARKED_TASK or not _after_done(task, tasks):
                    continue
                hold = _hold_on(holds, _hashes_of(request))
                if hold is not None:  # a hold placed after the request was filed: nothing more is deleted
                    self._park(s, request, [task], "held", f"legal hold: {hold.reason}", tasks=tasks)
                    continue
                task.not_dispatched_at = None  # the message arrived
                subject = self._unseal_for_claim(request)
                resolved = self._unseal_derived(request)
                if subject is None or resolved is None:  # nothing can run it: say so on the task, never wait
                    task.error = UNSEALABLE
                    self._audit(s, "task.unclaimable", request.id, task.id, detail={"target": task.target})
                    continue
                continuing = task.continues and task.status == "running"
                task.continues = False
                task.status = "running"
                task.started_at = task.started_at or at
                task.lease_expires_at = at + self.lease
                task.error = None
                if not continuing:
                    task.attempts += 1
                self._refresh(s, request, tasks=tasks)
                hashes = dict(request.subject_hashes)
                every_hash = _hashes_of(request)
                runs.append(TaskRun(task.id, request.id, task.target, task.kind, task.attempts, request.dry_run,
                                    subject, hashes,
                                    request.data_map_digest, approved_items=task.approved_items,
                                    approved=task.approved_items is not None
                                    or (request.dataset is not None and request.approved_at is not None),
                                    dataset=request.dataset, continuation=continuing,
                                    datasets=sorted({d for h in every_hash for d in datasets.get(h, ())}),
                                    derived=resolved))
            return runs

    def _unseal_for_claim(self, request: Request) -> Subject | None:
        """The request's raw identifiers, or None when this host cannot read them (another subject key, or a
        sealed value that was tampered with or is missing)."""
        if request.sealed_subject is None:
            return None
        try:
            return self._unseal(request.id, request.sealed_subject)
        except (InvalidTag, ValueError):
            return None

    def renew_lease(self, task_id: str, done: int | None = None, estimated: int | None = None) -> None:
        """A running task is alive: extend its lease, and record its progress when given."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id)
            if task is not None and task.status == "running":
                task.lease_expires_at = now() + self.lease
                if done is not None:
                    task.progress_done = done
                if estimated is not None:
                    task.progress_estimated = estimated

    def hand_back(self, task_id: str, done: int) -> Dispatch | None:
        """A resumable purge used its time slice: keep what it deleted, renew the lease, send it again."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            if task is None or task.status != "running":
                return None
            task.carried_deleted = (task.carried_deleted or 0) + done
            task.continues = True  # the next claim continues this purge: counted once, at its start
            task.progress_done = task.carried_deleted
            task.lease_expires_at = now() + self.lease
            task.dispatched_at = now()
            self._audit(s, "task.continued", task.request_id, task.id,
                        detail={"target": task.target, "deleted_so_far": task.carried_deleted})
            return Dispatch(task.id, task.kind, continuation=True)

    def complete(self, task_id: str, deleted: int, residue: int, level: str = "bytes_reclaimed",
                 events: Sequence[tuple[str, dict[str, Any]]] = (), note: str | None = None) -> list[Dispatch]:
        """A verified purge (residue 0): write the completion record once and release what waited on it.
        For a dry run, ``deleted`` is what would go and no record is written."""
        if residue:
            raise ValueError("a task with residue cannot complete")
        return self.complete_many([Outcome(task_id, deleted, level, tuple(events), note)])

    def complete_many(self, outcomes: Sequence[Outcome]) -> list[Dispatch]:
        """Record verified purges in one transaction: one completion record each (written once, whatever
        redeliveries do), the audit entries and events, and the release of what waited on them."""
        by_task = {o.task_id: o for o in outcomes}
        with self.sessions.begin() as s:
            tasks = list(s.scalars(select(Task).where(Task.id.in_(set(by_task))).order_by(Task.id).with_for_update()))
            requests = self._lock_requests(s, {t.request_id for t in tasks})
            siblings = self._tasks_of(s, requests)
            at = now()
            order = {task_id: n for n, task_id in enumerate(by_task)}
            records: dict[str, dict[str, CompletionRecord]] = {}  # request id -> target -> its record
            totals = {t.id: by_task[t.id].deleted + (t.carried_deleted or 0) for t in tasks}  # earlier slices too
            real = [t for t in tasks if not requests[t.request_id].dry_run]
            if real:
                # Insert-if-absent on (request, target): a redelivered or concurrent run keeps the first.
                dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
                s.execute(dialect.insert(CompletionRecord).on_conflict_do_nothing(), [
                    {"request_id": t.request_id, "target": t.target, "task_id": t.id, "deleted": totals[t.id],
                     "residue": 0, "level": by_task[t.id].level, "verified_at": at} for t in real])
                for r in s.scalars(select(CompletionRecord)
                                   .where(CompletionRecord.request_id.in_({t.request_id for t in real}))):
                    records.setdefault(r.request_id, {})[r.target] = r
            for task in sorted(tasks, key=lambda t: order[t.id]):
                if task.status == "completed":  # a redelivered or concurrent run: recorded already
                    continue
                request = requests[task.request_id]
                outcome = by_task[task.id]
                record: dict[str, Any] = _record_detail(records[task.request_id][task.target]) \
                    if not request.dry_run else {
                    "target": task.target, "deleted": totals[task.id], "residue": 0, "level": outcome.level,
                    "verified_at": rfc3339(at)}
                task.status, task.deleted, task.residue = "completed", record["deleted"], record["residue"]
                task.level, task.error, task.finished_at, task.lease_expires_at = record["level"], None, at, None
                # "erased 0 items" must be visible, not silent: the status, dashboard and certificate say so.
                task.reason = outcome.note or task.reason or (NOTHING_MATCHED if not record["deleted"] else None)
                if task.progress_estimated is not None:
                    task.progress_done = record["deleted"]
                entry = self._audit(s, "task.completed", request.id, task.id,
                                    detail={**record, "attempt": task.attempts, "dry_run": request.dry_run})
                if not request.dry_run:
                    self._emit(s, "lethe.erasure.task_completed", entry,
                               {"request_id": request.id, "subject_hashes": request.subject_hashes, **record})
                    for n, (event_type, data) in enumerate(outcome.events):  # what the target asked to announce
                        self._emit(s, event_type, f"{entry}/{n}", {"request_id": request.id, **data})
            dispatches = []
            for request in requests.values():
                dispatches += self._release_ready(s, request, siblings[request.id])
                self._refresh(s, request, tasks=siblings[request.id], records=records.get(request.id))
            return dispatches

    def fail(self, task_id: str, error: str, residue: int | None = None) -> None:
        """A permanent error, or retries exhausted: the task ends failed and keeps the (sanitised) error."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            assert task is not None
            request = s.get(Request, task.request_id, with_for_update=True)
            assert request is not None
            if task.status in TERMINAL_TASK:
                return
            task.status, task.error, task.finished_at, task.lease_expires_at = "failed", error, now(), None
            if residue is not None:
                task.residue = residue
            self._audit(s, "task.failed", request.id, task.id, detail={"target": task.target, "error": error})
            self._refresh(s, request)

    def note_retry(self, task_id: str, error: str, countdown: float) -> None:
        """A retryable error: the task stays running; its lease covers the backoff."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id)
            if task is not None and task.status == "running":
                task.error = error
                task.lease_expires_at = now() + self.lease + timedelta(seconds=countdown)
                self._audit(s, "task.retrying", task.request_id, task.id,
                            detail={"target": task.target, "error": error, "countdown": round(countdown, 1)})

    # -- operators ------------------------------------------------------------------------------------
    def retry(self, request_id: str, actor: str = "cli") -> list[Dispatch]:
        """Failed tasks back to pending; the request runs again."""
        with self.sessions.begin() as s:
            request = self._request(s, request_id, lock=True)
            if request.status == "cancelled":
                raise LedgerError("a cancelled request cannot be retried")
            failed = [t for t in self._tasks(s, request_id) if t.status == "failed"
                      or (t.status == "held" and not (t.reason or "").startswith("legal hold"))]
            if not failed:
                raise LedgerError("the request has no failed task to retry")
            for t in failed:
                t.status, t.error, t.finished_at = "pending", None, None
                t.lease_expires_at, t.dispatched_at = None, None
            request.status, request.completed_at = "running", None
            self._audit(s, "request.retried", request_id, actor=actor,
                        detail={"targets": [t.target for t in failed]})
            dispatches = self._release_ready(s, request)
            self._refresh(s, request, actor=actor)
            return dispatches

    # -- safety: holds, approvals, deadlines -----------------------------------------------------------
    def hold_task(self, task_id: str, reason: str) -> None:
        """The store refuses deletion for a legal reason (S3 Object Lock): the task waits, held."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            assert task is not None
            request = s.get(Request, task.request_id, with_for_update=True)
            assert request is not None
            self._park(s, request, [task], "held", reason)

    def await_approval(self, task_id: str, items: int, max_items: int) -> None:
        """A purge larger than the target's max_items stops before deleting anything."""
        with self.sessions.begin() as s:
            task = s.get(Task, task_id, with_for_update=True)
            assert task is not None
            request = s.get(Request, task.request_id, with_for_update=True)
            assert request is not None
            task.deleted, task.counted_items = None, items  # what the admin is shown, and may approve
            self._park(s, request, [task], "awaiting_approval",
                       f"{items} items exceed max_items {max_items}: waiting for an admin's approval")

    def approve(self, request_id: str, actor: str = "cli") -> list[Dispatch]:
        """An admin lets a request over a blast-radius limit go ahead: only the waiting tasks, each up to the
        count it waited with. Any other task is still counted before it deletes, and waits on its own."""
        with self.sessions.begin() as s:
            request = self._request(s, request_id, lock=True)
            waiting = [t for t in self._tasks(s, request_id) if t.status == "awaiting_approval"]
            if not waiting:
                raise LedgerError(f"request is {request.status}: nothing waits for approval")
            request.approved_by, request.approved_at = actor, now()
            for t in waiting:
                t.approved_items = t.counted_items
            self._unpark(waiting)
            self._audit(s, "request.approved", request_id, actor=actor,
                        detail={"targets": [t.target for t in waiting],
                                "items": {t.target: t.counted_items for t in waiting}})
            self._refresh(s, request, actor=actor)
            return self._release_ready(s, request)

    def add_hold(self, subject_hashes: Iterable[str], reason: str, until: datetime | None = None,
                 actor: str = "cli", subject: Subject | None = None) -> int:
        """Place a legal hold on a subject (by keyed hash). Returns the number of hashes held. ``subject``:
        the values hashed, so a reason that repeats one is refused before it reaches the audit chain."""
        _check_reason(reason, "a hold", subject.values() if subject is not None else ())
        if until is not None and until <= now():
            raise InvalidInput("--until must be in the future")
        hashes = sorted(set(subject_hashes))
        with self.sessions.begin() as s:
            for subject_hash in hashes:
                s.add(Hold(subject_hash=subject_hash, reason=reason, until=until, created_at=now(), created_by=actor))
            self._audit(s, "hold.added", None, actor=actor,
                        detail={"subject_hashes": hashes, "reason": reason, "until": rfc3339(until)})
        return len(hashes)

    def release_hold(self, subject_hashes: Iterable[str], actor: str = "cli") -> list[Dispatch]:
        """Release a subject's holds; their held requests resume. Returns the tasks to dispatch."""
        hashes = set(subject_hashes)
        with self.sessions.begin() as s:
            holds = s.scalars(select(Hold).where(Hold.subject_hash.in_(hashes), Hold.released_at.is_(None))).all()
            if not holds:
                raise LedgerError("the subject has no active hold")
            for hold in holds:
                hold.released_at, hold.released_by = now(), actor
            self._audit(s, "hold.released", None, actor=actor, detail={"subject_hashes": sorted(hashes)})
            return self._resume_held(s, actor)

    def list_holds(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(select(Hold).where(Hold.released_at.is_(None)).order_by(Hold.created_at)).all()
            return [{"subject_hash": h.subject_hash, "reason": h.reason, "until": rfc3339(h.until),
                     "created_at": rfc3339(h.created_at), "created_by": h.created_by,
                     "active": h.until is None or h.until > now()} for h in rows]

    def resume_expired_holds(self) -> list[Dispatch]:
        """Requests held only by holds whose --until passed go ahead (run by reconcile)."""
        with self.sessions.begin() as s:
            return self._resume_held(s, "reconcile")

    def extend_deadline(self, request_id: str, reason: str, actor: str = "cli") -> str:
        """Extend the deadline once, with a reason: GDPR Art. 12(3) two further months, CCPA 45 more days."""
        with self.sessions.begin() as s:
            request = self._request(s, request_id, lock=True)
            sealed = request.sealed_subject
            resolved = self._unseal_derived(request) or {}  # a resolved identifier is the subject's too
            _check_reason(reason, "an extension", [*(self._unseal(request.id, sealed).values() if sealed else ()),
                                                   *(v for values in resolved.values() for v in values)])
            if request.extension_reason is not None:
                raise LedgerError("the deadline was already extended once")
            if request.status in TERMINAL_REQUEST:
                raise LedgerError(f"request is {request.status}")
            before = request.due_at
            request.due_at = due_date(due_date(before, "gdpr"), "gdpr") if request.regime == "gdpr" \
                else before + timedelta(days=45)
            request.extension_reason = reason
            self._audit(s, "request.extended", request_id, actor=actor,
                        detail={"from": rfc3339(before), "to": rfc3339(request.due_at), "reason": reason})
            return rfc3339(request.due_at) or ""

    def _active_hold(self, s: Session, subject_hashes: Iterable[str]) -> Hold | None:
        hashes = list(subject_hashes)
        return _hold_on(self._active_holds(s, hashes), hashes)

    @staticmethod
    def _active_holds(s: Session, subject_hashes: Iterable[str]) -> dict[str, Hold]:
        """Subject hash -> an active hold on it, for any number of subjects in one query."""
        hashes = set(subject_hashes)
        if not hashes:
            return {}
        rows = s.scalars(select(Hold).where(Hold.subject_hash.in_(hashes), Hold.released_at.is_(None),
                                            (Hold.until.is_(None)) | (Hold.until > now())).order_by(Hold.id))
        holds: dict[str, Hold] = {}
        for hold in rows:
            holds.setdefault(hold.subject_hash, hold)
        return holds

    def _park(self, s: Session, request: Request, parked: list[Task], status: str, reason: str,
              actor: str = "worker", tasks: list[Task] | None = None) -> None:
        for task in parked:
            task.status, task.reason, task.lease_expires_at, task.dispatched_at = status, reason, None, None
            self._audit(s, f"task.{status}", request.id, task.id, actor=actor,
                        detail={"target": task.target, "reason": reason})
        self._refresh(s, request, actor=actor, tasks=tasks)

    @staticmethod
    def _unpark(tasks: Iterable[Task]) -> None:
        for task in tasks:
            task.status, task.reason, task.lease_expires_at, task.dispatched_at = "pending", None, None, None

    def _resume_held(self, s: Session, actor: str) -> list[Dispatch]:
        dispatches: list[Dispatch] = []
        for request in s.scalars(select(Request).where(Request.status == "on_hold").with_for_update()).all():
            if self._active_hold(s, _hashes_of(request)) is not None:
                continue
            held = [t for t in self._tasks(s, request.id)
                    if t.status == "held" and (t.reason or "").startswith("legal hold")]
            if not held:
                continue
            self._unpark(held)
            self._audit(s, "request.resumed", request.id, actor=actor, detail={"targets": [t.target for t in held]})
            self._refresh(s, request, actor=actor)
            dispatches += self._release_ready(s, request)
        return dispatches

    def cancel(self, request_id: str, actor: str = "cli") -> None:
        """Only before execution: once any purge started, erasure runs to its end."""
        with self.sessions.begin() as s:
            request = self._request(s, request_id, lock=True)
            tasks = self._tasks(s, request_id)
            if request.status in TERMINAL_REQUEST or any(
                t.status not in ("pending", "skipped", "held", "awaiting_approval") or t.attempts for t in tasks
            ):
                raise LedgerError(f"request is {request.status} and has started; only a request that "
                                  "has not started executing can be cancelled")
            request.status, request.completed_at, request.sealed_subject = "cancelled", now(), None
            request.sealed_derived = None
            s.info[WIPED_RAW_VALUES] = True
            for t in tasks:
                if t.status in ("pending", "held", "awaiting_approval"):
                    t.status, t.reason, t.lease_expires_at = "skipped", "cancelled", None
            self._audit(s, "request.cancelled", request_id, actor=actor)

    def mark_not_dispatched(self, task_ids: Sequence[str], error: str) -> None:
        """The broker did not take these tasks: put them on record as not dispatched, with why (shown in
        status), so reconcile sends them on its next pass instead of after the lease."""
        at = now()
        with self.sessions.begin() as s:
            tasks = s.scalars(select(Task).where(Task.id.in_(set(task_ids)), Task.status.in_(("pending", "running")))
                              .order_by(Task.id).with_for_update()).all()
            for task in tasks:
                task.not_dispatched_at, task.error = at, error
            for request_id in sorted({t.request_id for t in tasks}):
                self._audit(s, "tasks.not_dispatched", request_id, actor="dispatch",
                            detail={"targets": sorted(t.target for t in tasks if t.request_id == request_id)})

    def due_for_dispatch(self, limit: int = 1000) -> list[Dispatch]:
        """Non-terminal tasks whose lease ran out, that were never sent, or whose hand-off to the broker
        failed (at once, not after the lease): send them again."""
        at = now()
        with self.sessions.begin() as s:
            rows = s.scalars(
                select(Task)
                .join(Request, Request.id == Task.request_id)
                .where(Task.status.in_(("pending", "running")),
                       Request.status.notin_(TERMINAL_REQUEST),
                       Task.lease_expires_at.is_(None) | (Task.lease_expires_at < at)
                       | Task.not_dispatched_at.is_not(None))
                .order_by(Task.lease_expires_at)
                .limit(limit)
                .with_for_update(of=Task, skip_locked=True)
            ).all()
            dispatches = []
            for task in rows:
                if not self._after_done(s, task):
                    continue
                task.lease_expires_at, task.dispatched_at = at + self.lease, at
                if task.not_dispatched_at is not None:  # sent again: a failed send is marked again by send()
                    task.not_dispatched_at, task.error = None, None
                dispatches.append(Dispatch(task.id, task.kind))
                self._audit(s, "task.redispatched", task.request_id, task.id, actor="reconcile",
                            detail={"target": task.target, "status": task.status})
            return dispatches

    # -- reading --------------------------------------------------------------------------------------
    def data_map(self, digest: str, session: Session | None = None) -> DataMap:
        """The map a request was planned from (cached: snapshots never change). Pass the open session when
        called inside a transaction: a second SQLite connection would wait for its write lock."""
        if digest not in self._maps:
            with self.sessions() if session is None else nullcontext(session) as s:
                snap = s.get(DataMapSnapshot, digest)
                if snap is None:
                    raise LedgerError(f"data map {digest[:12]} is not in the ledger")
                self._maps[digest] = DataMap.parse(snap.text, source=f"data map {digest[:12]}")
        return self._maps[digest]

    def status(self, request_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            request = self._request(s, request_id)
            return status_object(request, self._tasks(s, request_id))

    def not_dispatched_count(self, request_ids: Sequence[str]) -> int:
        """How many tasks of these requests are on record as not dispatched (a bulk erasure's warning)."""
        count = 0
        with self.sessions() as s:
            for start in range(0, len(request_ids), 10_000):
                count += s.scalar(select(func.count()).select_from(Task).where(
                    Task.request_id.in_(request_ids[start:start + 10_000]), Task.not_dispatched_at.is_not(None))) or 0
        return count

    def resolve_request_id(self, given: str) -> str:
        """The id of the request ``given`` names: its whole id or, as git takes commits, any unique prefix of
        at least ID_PREFIX_MIN characters. Raises UnknownRequest, or LedgerError saying how many it matches."""
        prefix = given.strip().lower()
        if len(prefix) < ID_PREFIX_MIN or len(prefix) > 36 or prefix.strip("0123456789abcdef-"):
            raise UnknownRequest(f"no request with id {given[:40]!r} (give the id, or {ID_PREFIX_MIN} or more "
                                 "of its first characters)")
        with self.sessions() as s:
            found = s.scalars(select(Request.id).where(Request.id.like(prefix + "%")).limit(100)).all()
        if not found:
            raise UnknownRequest(f"no request with id {given!r}")
        if len(found) > 1:
            raise LedgerError(f"id prefix {given!r} matches {len(found)}{'+' if len(found) == 100 else ''} "
                              "requests: give more characters")
        return found[0]

    def short_ids(self, request_ids: Collection[str]) -> dict[str, str]:
        """Each id's shortest prefix of at least SHORT_ID_MIN characters no other request shares (it is
        taken back by ``resolve_request_id``)."""
        heads = {rid[:SHORT_ID_MIN] for rid in request_ids}
        with self.sessions() as s:
            near = s.scalars(select(Request.id).where(func.substr(Request.id, 1, SHORT_ID_MIN).in_(heads))).all()
        short = {}
        for rid in request_ids:
            others = [o for o in near if o != rid and o[:SHORT_ID_MIN] == rid[:SHORT_ID_MIN]]
            short[rid] = rid[:max([SHORT_ID_MIN, *(_shared_prefix(rid, o) + 1 for o in others)])]
        return short

    def status_counts(self, request_ids: Sequence[str]) -> dict[str, int]:
        """How many of these requests are in each status (a bulk erasure's progress)."""
        counts: dict[str, int] = {}
        with self.sessions() as s:
            for start in range(0, len(request_ids), 10_000):
                for status, n in s.execute(select(Request.status, func.count()).where(
                        Request.id.in_(request_ids[start:start + 10_000])).group_by(Request.status)):
                    counts[status] = counts.get(status, 0) + n
        return counts

    def list_requests(self, status: str | None = None, overdue: bool = False, limit: int = 100,
             cursor: str | None = None, requested_by: str | None = None) -> dict[str, Any]:
        """Newest first; ``cursor`` is the opaque ``next`` of the previous page; ``requested_by``: only the
        requests filed under that API token name."""
        if status and status not in REQUEST_STATUSES:
            raise LedgerError(f"unknown status {status[:40]!r} (one of: {', '.join(REQUEST_STATUSES)})")
        with self.sessions() as s:
            query = select(Request).order_by(Request.received_at.desc(), Request.id.desc())
            if requested_by is not None:
                query = query.where(Request.requested_by == requested_by)
            if status:
                query = query.where(Request.status == status)
            if overdue:
                query = query.where(Request.due_at < now(), Request.status.notin_(TERMINAL_REQUEST))
            if cursor:
                at, rid = _decode_cursor(cursor)
                query = query.where((Request.received_at < at)
                                    | ((Request.received_at == at) & (Request.id < rid)))
            rows = s.scalars(query.limit(limit + 1)).all()
            page = rows[:limit]
            tasks: dict[str, list[Task]] = {r.id: [] for r in page}
            if page:
                for t in s.scalars(select(Task).where(Task.request_id.in_(tasks)).order_by(Task.position)):
                    tasks[t.request_id].append(t)
            items = [status_object(r, tasks[r.id]) for r in page]
            nxt = _encode_cursor(page[-1]) if len(rows) > limit else None
            return {"items": items, "next": nxt}

    def audit_trail(self, request_id: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            self._request(s, request_id)
            rows = s.scalars(select(AuditEntry).where(AuditEntry.request_id == request_id)
                             .order_by(AuditEntry.id)).all()
            return [{"at": rfc3339(e.at), "actor": e.actor, "action": e.action, "task_id": e.task_id,
                     "detail": e.detail} for e in rows]

    def completion_record_count(self, request_id: str) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(CompletionRecord)
                            .where(CompletionRecord.request_id == request_id)) or 0

    # -- events ---------------------------------------------------------------------------------------
    @staticmethod
    def _emit(s: Session, event_type: str, audit_hash: str, data: dict[str, Any]) -> None:
        """Queue an outbound CloudEvent in the transaction of the change it announces (the outbox)."""
        at = now()
        event_id = str(uuid.uuid5(EVENT_NAMESPACE, audit_hash))
        event = {"specversion": "1.0", "id": event_id, "source": "lethe", "type": event_type,
                 "time": rfc3339(at), "datacontenttype": "application/json", "data": data}
        s.add(OutboxEvent(event_id=event_id, type=event_type, body=certificates.canonical_json(event).decode(),
                          created_at=at))

    def publish_outbox(self, publish: Callable[[str, dict[str, Any]], None], limit: int = 500) -> int:
        """Hand unpublished events to ``publish(type, event)`` in order and mark them published. Rows are
        locked (skipped by other publishers); a failed publish leaves them for the next call. Consumers
        deduplicate on the CloudEvent id if a crash after publishing sends one twice."""
        with self.sessions.begin() as s:
            rows = s.execute(select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.body)
                             .where(OutboxEvent.published_at.is_(None))
                             .order_by(OutboxEvent.id).limit(limit).with_for_update(skip_locked=True)).all()
            for _, event_type, body in rows:
                publish(event_type, json.loads(body))
            if rows:
                published = [row[0] for row in rows]
                s.execute(update(OutboxEvent).where(OutboxEvent.id.in_(published)).values(published_at=now()))
            return len(rows)

    def tombstones_of(self, subject_hashes: Iterable[str], days: int) -> dict[str, str]:
        """Which of these keyed hashes a completed request erased within ``days``: hash -> the id of the
        latest such request, newest first. A data_written event re-erases only these identifiers."""
        with self.sessions() as s:
            rows = s.execute(select(Tombstone.subject_hash, Tombstone.request_id).where(
                Tombstone.subject_hash.in_(list(subject_hashes)), Tombstone.erased_at >= now() - timedelta(days=days),
            ).order_by(Tombstone.erased_at.desc())).all()
        latest: dict[str, str] = {}
        for subject_hash, request_id in rows:
            latest.setdefault(subject_hash, request_id)
        return latest  # newest first

    def request_by_idempotency_key(self, stored_key: str) -> str | None:
        """The request filed under a stored idempotency key (see ``stored_idempotency_key``), if any."""
        with self.sessions() as s:
            return s.scalar(select(Request.id).where(Request.idempotency_key == stored_key))

    def count_dead_letter(self, reason: str) -> None:
        with self.sessions.begin() as s:
            _insert_if_absent(s, DeadLetterCount, reason=reason, count=0)
            s.execute(update(DeadLetterCount).where(DeadLetterCount.reason == reason)
                      .values(count=DeadLetterCount.count + 1))

    def dead_letter_counts(self) -> dict[str, int]:
        with self.sessions() as s:
            return {r.reason: r.count for r in s.scalars(select(DeadLetterCount))}

    # -- lineage --------------------------------------------------------------------------------------
    def record_lineage(self, name: str, digest: str, subject_hashes: Iterable[str], actor: str = "cli",
                       on_progress: Callable[[int], None] | None = None) -> int:
        """Record which subjects (as keyed hashes) a training dataset holds; recording the same dataset
        again replaces its members. Bulk-loaded: COPY on PostgreSQL, batched inserts on SQLite."""
        at = now()
        with self.sessions.begin() as s:
            s.execute(delete(DatasetMember).where(DatasetMember.dataset_name == name,
                                                  DatasetMember.dataset_digest == digest))
            s.execute(delete(Dataset).where(Dataset.name == name, Dataset.digest == digest))
            s.add(Dataset(name=name, digest=digest, members=0, recorded_at=at))
            s.flush()
            count = 0
            if s.get_bind().dialect.name == "postgresql":
                raw = s.connection().connection.driver_connection
                assert raw is not None
                with raw.cursor() as cur:
                    # COPY into a narrow temporary table, then one insert in hash order: index pages are
                    # filled in sequence instead of at random (about twice as fast at millions of rows).
                    cur.execute("CREATE TEMP TABLE lineage_load (subject_hash varchar(64)) ON COMMIT DROP")
                    with cur.copy("COPY lineage_load (subject_hash) FROM STDIN") as copy:
                        for subject_hash in subject_hashes:
                            copy.write_row((subject_hash,))
                            count += 1
                            if on_progress and count % 10_000 == 0:
                                on_progress(count)
                    cur.execute("INSERT INTO dataset_members (dataset_name, dataset_digest, subject_hash) "
                                "SELECT %s, %s, subject_hash FROM lineage_load ORDER BY subject_hash", (name, digest))
            else:
                batch: list[dict[str, str]] = []
                for subject_hash in subject_hashes:
                    batch.append({"dataset_name": name, "dataset_digest": digest, "subject_hash": subject_hash})
                    if len(batch) == 10_000:
                        s.execute(insert(DatasetMember), batch)
                        count += len(batch)
                        batch = []
                        if on_progress:
                            on_progress(count)
                if batch:
                    s.execute(insert(DatasetMember), batch)
                    count += len(batch)
            s.execute(update(Dataset).where(Dataset.name == name, Dataset.digest == digest).values(members=count))
            self._audit(s, "lineage.recorded", None, actor=actor,
                        detail={"dataset_name": name, "dataset_digest": digest, "members": count})
            return count

    def list_datasets(self) -> list[dict[str, Any]]:
        """The training datasets recorded with ``record_lineage``, newest first, with how many subjects each
        holds (never who)."""
        with self.sessions() as s:
            rows = s.scalars(select(Dataset).order_by(Dataset.recorded_at.desc(), Dataset.name, Dataset.digest))
            return [{"name": d.name, "digest": d.digest, "members": d.members, "recorded_at": rfc3339(d.recorded_at)}
                    for d in rows]

    def datasets_for(self, subject_hashes: Iterable[str]) -> list[tuple[str, str]]:
        """(name, digest) of every recorded dataset that holds one of these subjects (one indexed lookup)."""
        with self.sessions() as s:
            found = self._datasets_of(s, subject_hashes)
        return sorted({d for datasets in found.values() for d in datasets})

    @staticmethod
    def _datasets_of(s: Session, subject_hashes: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """Subject hash -> (name, digest) of the recorded datasets holding it, for a whole batch at once."""
        hashes = set(subject_hashes)
        found: dict[str, list[tuple[str, str]]] = {}
        if hashes:
            for name, digest, subject_hash in s.execute(
                    select(DatasetMember.dataset_name, DatasetMember.dataset_digest, DatasetMember.subject_hash)
                    .distinct().where(DatasetMember.subject_hash.in_(hashes))):
                found.setdefault(subject_hash, []).append((name, digest))
        return found

    # -- proof ----------------------------------------------------------------------------------------
    def _issue_certificate(self, s: Session, request: Request, tasks: list[Task], audit_head: str,
                           records: dict[str, CompletionRecord] | None = None) -> None:
        if records is None:
            with s.no_autoflush:  # records are written by INSERT statements, never pending in the session
                records = {r.target: r for r in s.scalars(
                    select(CompletionRecord).where(CompletionRecord.request_id == request.id))}
        datamap = self.data_map(request.data_map_digest, s)
        issued = now()

        def target_entry(t: Task) -> dict[str, Any]:
            r = records.get(t.target)
            return {"target": t.target, "kind": t.kind, "status": t.status,
                    "deleted": r.deleted if r else 0, "residue": r.residue if r else None,
                    "level": r.level if r else None, "verified_at": rfc3339(r.verified_at) if r else None,
                    "reason": t.reason}

        body = {
            "version": certificates.CERTIFICATE_VERSION,
            "request_id": request.id,
            "scope": request.scope,
            **({"dataset": request.dataset} if request.dataset else {"subject_hashes": request.subject_hashes}),
            **({"derived": request.derived_hashes} if request.derived_hashes else {}),
            "regime": request.regime,
            "received_at": rfc3339(request.received_at),
            "due_at": rfc3339(request.due_at),
            "completed_at": rfc3339(request.completed_at),
            "data_map_digest": request.data_map_digest,
            "targets": [target_entry(t) for t in tasks],
            "exemptions": [{"store": st.name, "reason": st.not_erased} for st in datamap.stores if st.not_erased],
            "audit_head": audit_head,
            "issued_at": rfc3339(issued),
            "key_id": certificates.key_id(self.signing_key.public_key()),
        }
        signed = certificates.sign(body, self.signing_key)
        s.add(Certificate(request_id=request.id, body=certificates.canonical_json(signed).decode(), issued_at=issued))
        self._audit(s, "certificate.issued", request.id, detail={"sha256": certificates.sha256_hex(signed)})
        proof.sign_head(s, self.signing_key, *s.info["audit_head"])  # every certificate: a signed head

    def certificate(self, request_id: str) -> dict[str, Any]:
        """The signed certificate of a completed request."""
        with self.sessions() as s:
            request = self._request(s, request_id)
            cert = s.get(Certificate, request_id)
            if cert is None:
                why = "dry runs get none" if request.dry_run else f"the request is {request.status}"
                raise LedgerError(f"no certificate for {request_id}: {why}")
            body: dict[str, Any] = json.loads(cert.body)
            return body

    def public_key_pem(self) -> str:
        """Every public key that verifies this ledger's certificates, newest (the one signing now) first, each
        headed by a ``# key_id …`` line: what ``lethe certificate --public-key`` prints and the documented
        offline check reads. A plain PEM reader takes the first key, the current one."""
        return "".join(f"# key_id {k.key_id} (generation {k.generation}, since {rfc3339(k.added_at)})\n{k.pem}"
                       for k in reversed(self.public_keys()))

    def public_keys(self) -> list[keys.KnownKey]:
        """Every signing key this ledger has used, oldest first (the last one signs now)."""
        with self.sessions() as s:
            return keys.known_keys(s)

    def verify(self) -> list[str]:
        """Walk the audit chain, its signed heads and checkpoint, the rows it protects (requests, holds,
        tombstones), completion records and certificates; return the problems (the first names the first bad
        entry), or an empty list when the ledger is intact."""
        with self.sessions() as s:
            return proof.verify(s)

    def signed_through(self) -> tuple[int, int]:
        """(last signed entry, last entry): a truncated tail after the last signed head goes unnoticed."""
        with self.sessions() as s:
            return (s.scalar(select(func.max(SignedHead.entry_id))) or 0,
                    s.scalar(select(func.max(AuditEntry.id))) or 0)

    def sign_head(self) -> bool:
        """Sign the chain's head if it is not signed yet (reconcile calls this: never more than one pass of
        entries unsigned). Returns True when it signed."""
        with self.sessions.begin() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
            head = s.execute(select(AuditEntry.id, AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)).first()
            if head is None or s.get(SignedHead, head[0]) is not None:
                return False
            proof.sign_head(s, self.signing_key, head[0], head[1])
            return True

    def rotate_signing_key(self, new_key: Ed25519PrivateKey, actor: str = "cli") -> str:
        """Take a new signing key: the rotation is an audit entry, cross-signed by the old key and the new
        one; from then on the new key signs. Returns its key_id. Every earlier certificate still verifies."""
        with self.sessions.begin() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
            statement = keys.rotate(s, self.signing_key, new_key)
            self._audit(s, "keys.rotated", None, actor=actor, detail=statement)
            proof.sign_head(s, self.signing_key, *s.info["audit_head"])  # the old key's last head
        self.signing_key = new_key
        self.sign_head()  # the new key's first
        return str(statement["key_id"])

    def _adopt(self, s: Session) -> None:
        """First use since migration 0006: what the ledger held before is put on the chain as it is now (row
        digests), the pruning checkpoint is signed and the head is signed, so proof starts from here."""
        checkpoint = s.get(AuditCheckpoint, 1)
        if checkpoint is not None and checkpoint.signature is None:
            proof.sign_checkpoint(checkpoint, self.signing_key)
        for model in proof.PROTECTED:
            rows = {proof.row_key(row): proof.row_digest(row) for row in s.scalars(select(model))}
            names = sorted(rows)
            for start in range(0, len(names), 10_000):
                self._audit(s, "rows.adopted", None, actor="ledger",
                            detail={"rows": {k: rows[k] for k in names[start:start + 10_000]}})
        if "audit_head" in s.info:
            proof.sign_head(s, self.signing_key, *s.info["audit_head"])

    def prune(self, retention_days: int, tombstone_days: int = 90) -> int:
        """Forget finished requests older than the retention period, tombstones after ``tombstone_days`` and
        idempotency keys after 30 days.

        Only a prefix of the audit chain can go (the chain must stay contiguous): the entries before the
        first one of a request that is kept. A signed checkpoint keeps the hash the remaining chain starts
        from, so verify-ledger still proves the rest; the digests of held and tombstoned rows those entries
        recorded are carried over into the prune's entry, and the tombstones removed are named in it.
        Returns the number of requests pruned.
        """
        at = now()
        with self.sessions.begin() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
            removed = list(s.scalars(delete(Tombstone).where(
                Tombstone.erased_at < at - timedelta(days=tombstone_days)).returning(Tombstone.id)))
            s.execute(delete(OutboxEvent).where(OutboxEvent.published_at < at - timedelta(days=IDEMPOTENCY_DAYS)))
            old_keys = Request.received_at < at - timedelta(days=IDEMPOTENCY_DAYS)
            for request in s.scalars(select(Request).where(old_keys, Request.idempotency_key.is_not(None))):
                request.idempotency_key, request.idempotency_digest = None, None
            cutoff = at - timedelta(days=retention_days)
            expired = select(Request.id).where(Request.status.in_(TERMINAL_REQUEST), Request.completed_at < cutoff)
            kept_first = s.scalar(select(func.min(AuditEntry.id)).where(
                AuditEntry.request_id.is_not(None), AuditEntry.request_id.not_in(expired)))
            last_entry = s.scalar(select(func.max(AuditEntry.id))) or 0
            through = kept_first - 1 if kept_first is not None else last_entry
            ids = list(s.scalars(select(AuditEntry.request_id).distinct().where(
                AuditEntry.id <= through, AuditEntry.request_id.is_not(None))))
            detail: dict[str, Any] = {"tombstones_removed": proof.id_ranges(removed)} if removed else {}
            if through >= 1 and ids:
                last_hash = s.scalar(select(AuditEntry.hash).where(AuditEntry.id == through))
                assert last_hash is not None
                carried = proof.recorded_rows(s, through)
                proof.apply_rows(carried, detail)
                detail["restated"] = {k: d for k, d in carried.items()
                                      if d is not None and not k.startswith("request:")}
                checkpoint = s.get(AuditCheckpoint, 1)
                if checkpoint is None:
                    checkpoint = AuditCheckpoint(id=1)
                    s.add(checkpoint)
                checkpoint.last_pruned_id, checkpoint.last_pruned_hash, checkpoint.pruned_at = through, last_hash, at
                proof.sign_checkpoint(checkpoint, self.signing_key)
                s.execute(delete(SignedHead).where(SignedHead.entry_id <= through))
                s.execute(delete(AuditEntry).where(AuditEntry.id <= through))
                s.execute(delete(Request).where(Request.id.in_(ids)))
                detail.update({"requests": len(ids), "through_entry": through, "retention_days": retention_days})
            else:
                ids = []
            if detail:
                self._audit(s, "ledger.pruned", None, actor="reconcile", detail=detail)
                proof.sign_head(s, self.signing_key, *s.info["audit_head"])
            return len(ids)

    # -- internals ------------------------------------------------------------------------------------
    def _request(self, s: Session, request_id: str, lock: bool = False) -> Request:
        try:
            uuid.UUID(request_id)
        except ValueError:
            raise UnknownRequest(f"no request with id {request_id!r}") from None
        request = s.get(Request, request_id, with_for_update=lock)
        if request is None:
            raise UnknownRequest(f"no request with id {request_id!r}")
        return request

    @classmethod
    def _tasks(cls, s: Session, request_id: str) -> list[Task]:
        return cls._tasks_of(s, [request_id])[request_id]

    @staticmethod
    def _tasks_of(s: Session, request_ids: Iterable[str]) -> dict[str, list[Task]]:
        """Every task of these requests, by request, in plan order: one query for a whole batch."""
        tasks: dict[str, list[Task]] = {request_id: [] for request_id in request_ids}
        if tasks:
            for t in s.scalars(select(Task).where(Task.request_id.in_(tasks)).order_by(Task.position)):
                tasks[t.request_id].append(t)
        return tasks

    @staticmethod
    def _lock_requests(s: Session, request_ids: Iterable[str]) -> dict[str, Request]:
        """Lock requests in id order (after their tasks, also in id order), as every batch operation does."""
        return {r.id: r for r in s.scalars(select(Request).where(Request.id.in_(set(request_ids)))
                                           .order_by(Request.id).with_for_update())}

    def _after_done(self, s: Session, task: Task) -> bool:
        return _after_done(task, self._tasks(s, task.request_id) if task.after else [])

    def _release_ready(self, s: Session, request: Request, tasks: list[Task] | None = None) -> list[Dispatch]:
        """Pending tasks whose `after` is satisfied and that were not sent yet get a lease and are sent."""
        if request.status in ("completed", "cancelled", "on_hold"):
            return []
        at = now()
        tasks = self._tasks(s, request.id) if tasks is None else tasks
        done = {t.target for t in tasks if t.status in DONE_TASK}
        dispatches = []
        for t in tasks:
            if t.status == "pending" and t.dispatched_at is None and set(t.after) <= done:
                t.dispatched_at, t.lease_expires_at = at, at + self.lease
                dispatches.append(Dispatch(t.id, t.kind))
        return dispatches

    def _refresh(self, s: Session, request: Request, actor: str = "worker", tasks: list[Task] | None = None,
                 records: dict[str, CompletionRecord] | None = None) -> None:
        """Derive the request's status from its tasks (all of them, and their completion records, if the caller
        has them loaded): the ledger decides, not the broker."""
        if request.status == "cancelled":
            return
        tasks = self._tasks(s, request.id) if tasks is None else tasks
        statuses = [t.status for t in tasks]
        before = request.status
        if all(st in DONE_TASK for st in statuses):
            request.status = "completed"
        elif self._can_progress(tasks):
            request.status = "running" if any(t.status != "pending" or t.attempts for t in tasks
                                              if t.status != "skipped") else "planned"
        elif "held" in statuses:
            request.status = "on_hold"
        elif "awaiting_approval" in statuses:
            request.status = "awaiting_approval"
        elif "failed" in statuses:
            request.status = "failed"
        elif any(t.status in ("running", "completed", "failed") or t.attempts for t in tasks):
            request.status = "running"
        else:
            request.status = "planned"
        if request.status == before:
            return
        if request.status in ("completed", "failed"):
            request.completed_at = now()
            head = self._audit(s, f"request.{request.status}", request.id, actor=actor,
                               detail={"tasks": {t.target: t.status for t in tasks}})
        if request.status == "completed":
            request.sealed_subject = request.sealed_derived = None  # no raw identifier survives a completed request
            s.info[WIPED_RAW_VALUES] = True
        if request.status in ("completed", "failed") and not request.dry_run:
            if request.status == "completed":
                self._issue_certificate(s, request, tasks, head, records)
                for subject_hash in _hashes_of(request):
                    s.add(Tombstone(subject_hash=subject_hash, request_id=request.id, erased_at=now()))
            self._emit(s, f"lethe.erasure.{request.status}", head, {
                "request_id": request.id, "subject_hashes": request.subject_hashes,
                "deleted": sum(t.deleted or 0 for t in tasks),
                "tasks": {st: sum(1 for t in tasks if t.status == st) for st in sorted({t.status for t in tasks})},
            })

    @staticmethod
    def _can_progress(tasks: Iterable[Task]) -> bool:
        """True while some task runs or could still run (pending, nothing failed or parked upstream)."""
        tasks = list(tasks)
        by_name = {t.target: t for t in tasks}

        def blocked(t: Task, seen: frozenset[str] = frozenset()) -> bool:
            for dep in t.after:
                d = by_name.get(dep)
                if d is None or dep in seen:
                    continue
                if d.status in PARKED_TASK | {"failed"} or (d.status == "pending" and blocked(d, seen | {t.target})):
                    return True
            return False

        return any(t.status == "running" or (t.status == "pending" and not blocked(t)) for t in tasks)

    def _audit(self, s: Session, action: str, request_id: str | None, task_id: str | None = None,
               actor: str = "worker", detail: dict[str, Any] | None = None) -> str:
        """Append an entry to the hash chain; returns its hash. Every ``proof.HEAD_EVERY``-th entry is signed.

        Appends are serialised so concurrent writers never fork the chain: a transaction-scoped advisory
        lock on PostgreSQL (held to commit), and SQLite's write lock (every transaction is BEGIN IMMEDIATE).
        """
        head: tuple[int, str] | None = s.info.get("audit_head")
        if head is None:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
            last = s.execute(select(AuditEntry.id, AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)).first()
            if last is not None:
                head = (last[0], last[1])
            else:
                checkpoint = s.get(AuditCheckpoint, 1)
                head = (checkpoint.last_pruned_id, checkpoint.last_pruned_hash) if checkpoint else (0, GENESIS_HASH)
        entry = AuditEntry(id=head[0] + 1, at=now(), request_id=request_id, task_id=task_id, actor=actor,
                           action=action, detail=detail or {}, prev_hash=head[1])
        entry.hash = audit_hash(entry)
        s.add(entry)
        s.info["audit_head"] = (entry.id, entry.hash)
        if entry.id % proof.HEAD_EVERY == 0:
            proof.sign_head(s, self.signing_key, entry.id, entry.hash)
        return entry.hash


def _check_reason(reason: str, what: str, values: Iterable[str] = ()) -> None:
    """A reason goes into the audit chain, which is kept for good: it must say something, and never the
    subject's identifier (in any case or encoding) that only the hashes may stand for."""
    if not reason.strip():
        raise InvalidInput(f"{what} needs a reason")
    if mentions(reason, values):
        raise InvalidInput(f"the reason for {what} contains the subject's identifier, which the audit trail "
                          "must never keep: state the ground without it")


def _shared_prefix(a: str, b: str) -> int:
    """How many leading characters two strings share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _hashes_of(request: Request) -> list[str]:
    """Every keyed hash of a request's subject: its own identifiers' and those its identities resolved (a
    hold, a tombstone or a training set recorded by user id covers a request filed by email)."""
    return [*request.subject_hashes.values(), *(d["hash"] for d in request.derived_hashes or ())]


def _hold_on(holds: dict[str, Hold], subject_hashes: Iterable[str]) -> Hold | None:
    """The active hold (from ``_active_holds``) on any of these subject hashes, if one is."""
    return next((holds[h] for h in subject_hashes if h in holds), None)


def _after_done(task: Task, tasks: Iterable[Task]) -> bool:
    """Every target this task runs `after` is done (completed or skipped)."""
    return not task.after or set(task.after) <= {t.target for t in tasks if t.status in DONE_TASK}


audit_hash = proof.audit_hash
_record_detail = proof.record_detail


def _insert_if_absent(s: Session, model: type[Base], **values: Any) -> None:
    """INSERT … ON CONFLICT DO NOTHING: concurrent writers of the same row never fail each other."""
    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    s.execute(dialect.insert(model).values(**values).on_conflict_do_nothing())


def status_object(request: Request, tasks: Iterable[Task]) -> dict[str, Any]:
    """The SPEC's status object."""
    tasks = list(tasks)
    return {
        "id": request.id,
        "scope": request.scope,
        "dataset": request.dataset,
        "status": request.status,
        "dry_run": request.dry_run,
        "regime": request.regime,
        "received_at": rfc3339(request.received_at),
        "due_at": rfc3339(request.due_at),
        "completed_at": rfc3339(request.completed_at),
        "subject_hashes": request.subject_hashes,
        "derived": request.derived_hashes or [],  # identifiers the map's identities resolved, as hashes
        "data_map_digest": request.data_map_digest,
        "requested_by": request.requested_by,
        # Tasks whose hand-off to the broker failed: reconcile sends them on its next pass (SPEC).
        "not_dispatched": sum(1 for t in tasks if t.not_dispatched_at is not None),
        "tasks": [
            {
                "target": t.target,
                "kind": t.kind,
                "status": t.status,
                "deleted": t.deleted,
                "residue": t.residue,
                "attempts": t.attempts,
                "error": t.error,
                "reason": t.reason,
                "level": t.level,
                "progress": {"done": t.progress_done, "estimated": t.progress_estimated}
                if t.progress_done is not None or t.progress_estimated is not None else None,
                "after": list(t.after),
                "not_dispatched_at": rfc3339(t.not_dispatched_at),
            }
            for t in tasks
        ],
    }


def _encode_cursor(request: Request) -> str:
    raw = f"{request.received_at.isoformat()}|{request.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, rid = raw.split("|", 1)
        when = datetime.fromisoformat(at)
        uuid.UUID(rid)
        if when.tzinfo is None:
            raise LedgerError("bad cursor")
        return to_utc(when), rid  # a forged cursor past the UTC range is refused (InvalidTime), not a 500
    except (ValueError, UnicodeDecodeError):
        raise LedgerError("bad cursor") from None
