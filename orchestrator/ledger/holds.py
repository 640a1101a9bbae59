"""Safety: legal holds, blast-radius approvals and deadline extensions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.certificates import rfc3339
from orchestrator.identifiers import Subject
from orchestrator.ledger.common import (
    TERMINAL_REQUEST,
    Dispatch,
    InvalidInput,
    LedgerError,
    check_reason,
    due_date,
    hashes_of,
    now,
)
from orchestrator.ledger.core import LedgerCore
from orchestrator.ledger.models import (
    Hold,
    Request,
)


class HoldLedger(LedgerCore):
    def hold_task(self, task_id: str, reason: str) -> None:
        """The store refuses deletion for a legal reason (S3 Object Lock): the task waits, held."""
        with self.sessions.begin() as s:
            (task,), requests, siblings = self._lock_tasks(s, [task_id])
            request = requests[task.request_id]
            self._park(s, request, [task], "held", reason, tasks=siblings[request.id])

    def await_approval(self, task_id: str, items: int, max_items: int) -> None:
        """A purge larger than the target's max_items stops before deleting anything."""
        with self.sessions.begin() as s:
            (task,), requests, siblings = self._lock_tasks(s, [task_id])
            request = requests[task.request_id]
            task.deleted, task.counted_items = None, items  # what the admin is shown, and may approve
            self._park(s, request, [task], "awaiting_approval",
                       f"{items} items exceed max_items {max_items}: waiting for an admin's approval",
                       tasks=siblings[request.id])

    def approve(self, request_id: str, actor: str = "cli") -> list[Dispatch]:
        """An admin lets a request over a blast-radius limit go ahead: only the waiting tasks, each up to the
        count it waited with. Any other task is still counted before it deletes, and waits on its own."""
        with self.sessions.begin() as s:
            self._request(s, request_id)  # an unknown or malformed id is refused before anything is locked
            requests, siblings = self._lock_family(s, [request_id])
            request, tasks = requests[request_id], siblings[request_id]
            waiting = [t for t in tasks if t.status == "awaiting_approval"]
            if not waiting:
                raise LedgerError(f"request is {request.status}: nothing waits for approval")
            request.approved_by, request.approved_at = actor, now()
            for t in waiting:
                t.approved_items = t.counted_items
            self._unpark(waiting)
            self._audit(s, "request.approved", request_id, actor=actor,
                        detail={"targets": [t.target for t in waiting],
                                "items": {t.target: t.counted_items for t in waiting}})
            self._refresh(s, request, actor=actor, tasks=tasks)
            return self._release_ready(s, request, tasks)

    def add_hold(self, subject_hashes: Iterable[str], reason: str, until: datetime | None = None,
                 actor: str = "cli", subject: Subject | None = None) -> int:
        """Place a legal hold on a subject (by keyed hash). Returns the number of hashes held. ``subject``:
        the values hashed, so a reason that repeats one is refused before it reaches the audit chain."""
        check_reason(reason, "a hold", subject.values() if subject is not None else ())
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
            check_reason(reason, "an extension", [*(self._unseal(request.id, sealed).values() if sealed else ()),
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

    def _resume_held(self, s: Session, actor: str) -> list[Dispatch]:
        dispatches: list[Dispatch] = []
        # Which requests are found unlocked (their subjects never change), so only those no hold keeps are
        # locked: their tasks, then them (``_lock_family``); a status changed meanwhile is seen under the lock.
        free = [r.id for r in s.scalars(select(Request).where(Request.status == "on_hold"))
                if self._active_hold(s, hashes_of(r)) is None]
        requests, siblings = self._lock_family(s, free)
        for request_id, request in sorted(requests.items()):
            if request.status != "on_hold":
                continue
            tasks = siblings[request_id]
            held = [t for t in tasks if t.status == "held" and (t.reason or "").startswith("legal hold")]
            if not held:
                continue
            self._unpark(held)
            self._audit(s, "request.resumed", request.id, actor=actor, detail={"targets": [t.target for t in held]})
            self._refresh(s, request, actor=actor, tasks=tasks)
            dispatches += self._release_ready(s, request, tasks)
        return dispatches

