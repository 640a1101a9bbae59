"""The ledger's core: engine, sessions, keys, the audit chain's append, sealing, and what every domain
shares: locking rows in order, releasing ready tasks, deriving a request's status (and so its certificate
and events), parking tasks."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Iterable
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import certificates, keys
from orchestrator.certificates import rfc3339
from orchestrator.copies import NO_COPY, gone_by
from orchestrator.identifiers import Subject
from orchestrator.ledger import appends, proof, snapshots
from orchestrator.ledger.certified_models import models_acted_on
from orchestrator.ledger.common import (
    DONE_TASK,
    EVENT_NAMESPACE,
    PARKED_TASK,
    Dispatch,
    LedgerError,
    UnknownRequest,
    after_done,
    among,
    hashes_of,
    hold_on,
    now,
)
from orchestrator.ledger.db import WIPED_RAW_VALUES, make_engine, migrate, session_factory
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    Certificate,
    CompletionRecord,
    DataMapSnapshot,
    DatasetMember,
    Hold,
    OutboxEvent,
    Request,
    Task,
    Tombstone,
)


class LedgerCore:
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
        self._maps: dict[str, str] = {}  # digest -> the stored map's text, checked against its digest
        proof.track_rows(self.sessions, lambda s, rows: appends.at_commit(s, rows, self.signing_key),
                         appends.TRANSACTION_KEYS)
        with self.sessions.begin() as s:  # another key than the ledger's: KeyMismatch, nothing written
            if keys.check(s, subject_key, signing_key, self._unseal):
                self._adopt(s)
        with self.sessions.begin() as s:
            appends.open_old_chains(s)

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
        # Chains written without the session's hooks (a test's stand-in for code before 0006) are adopted too.
        unnamed = set(s.scalars(select(AuditEntry.chain).distinct()
                                .where(AuditEntry.chain != proof.LEDGER_CHAIN))) - proof.opened_chains(s)
        if unnamed:
            self._audit(s, proof.OPENING, None, actor="ledger", detail={"chains": sorted(unnamed)})
        appends.sign_at_commit(s)

    def map_text(self, digest: str, session: Session | None = None) -> str:
        """The text of the data map a request was planned from (cached: snapshots never change). Its SHA-256
        is checked against the digest the request recorded: a map rewritten in the database after filing is
        refused (the task fails), never run. Pass the open session when called inside a transaction: a
        second SQLite connection would wait for its write lock."""
        if digest not in self._maps:
            with self.sessions() if session is None else nullcontext(session) as s:
                snap = s.get(DataMapSnapshot, digest)
                if snap is None:
                    raise LedgerError(f"data map {digest[:12]} is not in the ledger")
                if not snapshots.text_matches(snap.text, digest):
                    raise LedgerError(f"data map {digest[:12]} in the ledger does not match its digest: it was "
                                      "changed after requests were planned from it, and is not used")
                self._maps[digest] = snap.text
        return self._maps[digest]

    @staticmethod
    def _emit(s: Session, event_type: str, audit_hash: str, data: dict[str, Any]) -> None:
        """Queue an outbound CloudEvent in the transaction of the change it announces (the outbox)."""
        at = now()
        event_id = str(uuid.uuid5(EVENT_NAMESPACE, audit_hash))
        event = {"specversion": "1.0", "id": event_id, "source": "lethe", "type": event_type,
                 "time": rfc3339(at), "datacontenttype": "application/json", "data": data}
        s.add(OutboxEvent(event_id=event_id, type=event_type, body=certificates.canonical_json(event).decode(),
                          created_at=at))

    def _active_hold(self, s: Session, subject_hashes: Iterable[str]) -> Hold | None:
        hashes = list(subject_hashes)
        return hold_on(self._active_holds(s, hashes), hashes)

    @staticmethod
    def _active_holds(s: Session, subject_hashes: Iterable[str]) -> dict[str, Hold]:
        """Subject hash -> an active hold on it, for any number of subjects in one query."""
        hashes = set(subject_hashes)
        if not hashes:
            return {}
        rows = s.scalars(select(Hold).where(among(s, Hold.subject_hash, hashes), Hold.released_at.is_(None),
                                            (Hold.until.is_(None)) | (Hold.until > now())).order_by(Hold.id))
        holds: dict[str, Hold] = {}
        for hold in rows:
            holds.setdefault(hold.subject_hash, hold)
        return holds

    def _park(self, s: Session, request: Request, parked: list[Task], status: str, reason: str, *,
              tasks: list[Task], actor: str = "worker") -> None:
        """Park these tasks (held, awaiting approval); ``tasks`` is every task of the request, locked."""
        for task in parked:
            task.status, task.reason, task.lease_expires_at, task.dispatched_at = status, reason, None, None
            self._audit(s, f"task.{status}", request.id, task.id, actor=actor,
                        detail={"target": task.target, "reason": reason})
        self._refresh(s, request, actor=actor, tasks=tasks)

    @staticmethod
    def _unpark(tasks: Iterable[Task]) -> None:
        for task in tasks:
            task.status, task.reason, task.lease_expires_at, task.dispatched_at = "pending", None, None, None

    @staticmethod
    def _datasets_of(s: Session, subject_hashes: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """Subject hash -> (name, digest) of the recorded datasets holding it, for a whole batch at once."""
        hashes = set(subject_hashes)
        found: dict[str, list[tuple[str, str]]] = {}
        if hashes:
            for name, digest, subject_hash in s.execute(
                    select(DatasetMember.dataset_name, DatasetMember.dataset_digest, DatasetMember.subject_hash)
                    .distinct().where(among(s, DatasetMember.subject_hash, hashes))):
                found.setdefault(subject_hash, []).append((name, digest))
        return found

    def _issue_certificate(self, s: Session, request: Request, tasks: list[Task], audit_head: str,
                           records: dict[str, CompletionRecord] | None = None) -> None:
        if records is None:
            with s.no_autoflush:  # records are written by INSERT statements, never pending in the session
                records = {r.target: r for r in s.scalars(
                    select(CompletionRecord).where(CompletionRecord.request_id == request.id))}
        map_text = self.map_text(request.data_map_digest, s)
        exempt = snapshots.exemptions(map_text)
        copies = snapshots.copies(map_text)
        gone, request_gone = gone_by([(t.target, r.verified_at if (r := records.get(t.target)) else None)
                                      for t in tasks], copies)
        issued = now()

        def target_entry(t: Task) -> dict[str, Any]:
            r = records.get(t.target)
            replica_of = copies.get(t.target, NO_COPY).replica_of
            return {"target": t.target, "kind": t.kind, "status": t.status,
                    "deleted": r.deleted if r else 0, "residue": r.residue if r else None,
                    "level": r.level if r else None, "verified_at": rfc3339(r.verified_at) if r else None,
                    "reason": t.reason, "gone_by": rfc3339(gone[t.target]),
                    **({"replica_of": replica_of} if replica_of else {})}

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
            **({"models": models} if (models := models_acted_on(s, request.id, tasks)) else {}),
            "exemptions": exempt,
            "gone_by": rfc3339(request_gone),
            "audit_head": audit_head,
            "issued_at": rfc3339(issued),
            "key_id": certificates.key_id(self.signing_key.public_key()),
        }
        signed = certificates.sign(body, self.signing_key)
        s.add(Certificate(request_id=request.id, body=certificates.canonical_json(signed).decode(), issued_at=issued))
        # Signed at commit, as every certificate's entry is (appends.SIGNED_ACTIONS).
        self._audit(s, "certificate.issued", request.id, detail={"sha256": certificates.sha256_hex(signed)})

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
            for t in s.scalars(select(Task).where(among(s, Task.request_id, tasks)).order_by(Task.position)):
                tasks[t.request_id].append(t)
        return tasks

    @classmethod
    def _lock_tasks(cls, s: Session, task_ids: Iterable[str]) -> tuple[list[Task], dict[str, Request],
                                                                    dict[str, list[Task]]]:
        """``_lock_family`` of these tasks' requests; returns these tasks (in id order) too."""
        wanted = set(task_ids)
        # Their requests first, by a statement of its own (a task's request never changes, so no lock is
        # needed): given as a subquery, the planner guessed that half the table matched and read it whole.
        of_tasks = select(Task.request_id).where(among(s, Task.id, wanted))
        requests, siblings = cls._lock_family(s, set(s.scalars(of_tasks)))
        return sorted((t for family in siblings.values() for t in family if t.id in wanted),
                      key=lambda t: t.id), requests, siblings

    @classmethod
    def _lock_family(cls, s: Session, request_ids: Iterable[str]) -> tuple[dict[str, Request],
                                                                          dict[str, list[Task]]]:
        """Lock every task of these requests, then the requests, each in id order: the one order every
        transaction that changes a request or its tasks takes, so none deadlocks another. Returns the
        requests, and their tasks by request in plan order (what ``_refresh`` and ``_release_ready`` take, so
        neither reads them again unlocked). Every task is locked, not only the ones the caller changes,
        because deriving the status releases or refreshes siblings: updating a sibling unlocked, after the
        request's row, waited on reconcile's sweep holding that sibling while the sweep waited on the request
        (a deadlock, seen in the seed's kill-and-resume run). Rows already in the session are read again as
        the lock found them (``populate_existing``): a copy read before the lock may be stale."""
        wanted = set(request_ids)
        if not wanted:
            return {}, {}
        # Their ids first (a request's tasks are all written when it is filed), then the rows locked by primary
        # key: the planner knows each id is one row. Locked by request id in id order, it once judged that
        # 21,218 rows matched where 188 did, and walked the whole primary key to spare a sort (7 ms a batch,
        # half of PostgreSQL's time at 100,000 requests).
        ids = set(s.scalars(select(Task.id).where(among(s, Task.request_id, wanted))))
        family = list(s.scalars(select(Task).where(among(s, Task.id, ids)).order_by(Task.id)
                                .with_for_update().execution_options(populate_existing=True))) if ids else []
        requests = cls._lock_requests(s, wanted)
        tasks: dict[str, list[Task]] = {request_id: [] for request_id in requests}
        for t in sorted(family, key=lambda t: t.position):  # plan order, as _tasks_of gives them
            tasks[t.request_id].append(t)
        return requests, tasks

    @staticmethod
    def _lock_requests(s: Session, request_ids: Iterable[str]) -> dict[str, Request]:
        """Lock requests in id order (after their tasks, also in id order: ``_lock_family``)."""
        locked = {r.id: r for r in s.scalars(select(Request).where(among(s, Request.id, set(request_ids)))
                                             .order_by(Request.id).with_for_update()
                                             .execution_options(populate_existing=True))}
        appends.read_locked_tips(s, set(locked))
        return locked

    def _after_done(self, s: Session, task: Task) -> bool:
        return after_done(task, self._tasks(s, task.request_id) if task.after else [])

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
                for subject_hash in hashes_of(request):
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
        """Append an entry to its request's audit chain (the ledger's when it has no request); returns its
        hash (``appends``)."""
        return appends.append(s, action, request_id, task_id, actor=actor, detail=detail).hash
