"""Filing: requests recorded with the tasks the service planned, idempotency replays and conflicts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from orchestrator.ledger import appends
from orchestrator.ledger.common import (
    REGIMES,
    Dispatch,
    Filing,
    IdempotencyConflict,
    LedgerError,
    among,
    due_date,
    hashes_of,
    hold_on,
    insert_if_absent,
    now,
)
from orchestrator.ledger.core import LedgerCore
from orchestrator.ledger.models import (
    DataMapSnapshot,
    Request,
    Task,
)


class FilingLedger(LedgerCore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stored_maps: set[str] = set()  # digests of the map snapshots this process knows are stored

    def file_requests(
        self,
        map_text: str,
        filings: Sequence[Filing],
        *,
        dry_run: bool = False,
        regime: str = "gdpr",
        actor: str = "cli",
        only_targets: Collection[str] | None = None,
        dataset: str | None = None,
        requested_by: str | None = None,
    ) -> tuple[list[tuple[str, bool]], list[Dispatch]]:
        """Record planned requests in one transaction (a bulk erasure files thousands at once), with the text
        of the data map they were planned from. Returns (id, created) per filing, in order, and the
        dispatches of all of them. ``requested_by``: the API token name they are filed under.

        A replay with the same idempotency key and the same request returns the first one (created False);
        the same key with a different request raises IdempotencyConflict and nothing is filed.
        """
        if regime not in REGIMES:
            raise LedgerError(f"unknown regime {regime!r} (gdpr or ccpa)")
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
                return self._file(map_text, prepared, replays, dry_run=dry_run, regime=regime, actor=actor,
                                  dataset=dataset, requested_by=requested_by)
            except IntegrityError:
                if not keyed or attempt == 2:  # lost a race with the same key: the replay finds it next time
                    raise
        raise AssertionError("unreachable")

    def _file(self, map_text: str, prepared: list[tuple[Filing, dict[str, str], str]], replays: dict[str, str],
              *, dry_run: bool, regime: str, actor: str, dataset: str | None,
              requested_by: str | None) -> tuple[list[tuple[str, bool]], list[Dispatch]]:
        filed: list[tuple[str, bool]] = []
        dispatches: list[Dispatch] = []
        received = now()
        map_digest = hashlib.sha256(map_text.encode("utf-8")).hexdigest()
        with self.sessions.begin() as s:
            if map_digest not in self._stored_maps:  # a snapshot is never removed: one INSERT per map per process
                insert_if_absent(s, DataMapSnapshot, digest=map_digest, text=map_text, created_at=received)
            holds = self._active_holds(s, [h for f, hashes, _ in prepared
                                           for h in [*hashes.values(), *(d["hash"] for d in f.derived)]])
            for filing, hashes, digest in prepared:
                key = filing.idempotency_key
                if key is not None and key in replays:
                    filed.append((replays[key], False))
                    continue
                request_id = filing.request_id
                derived = list(filing.derived)
                request = Request(
                    id=request_id,
                    scope="dataset" if dataset is not None else "subject",
                    dataset=dataset,
                    status="planned",
                    dry_run=dry_run,
                    regime=regime,
                    received_at=received,
                    due_at=due_date(received, regime),
                    data_map_digest=map_digest,
                    subject_hashes=hashes,
                    sealed_subject=self._seal(request_id, filing.subject),
                    derived_hashes=derived or None,
                    sealed_derived=self._seal_derived(request_id, dict(filing.derived_values)) if derived else None,
                    idempotency_key=key,
                    idempotency_digest=digest if key else None,
                    actor=actor,
                    requested_by=requested_by,
                )
                s.add(request)
                appends.open_chain(s, request_id)
                if key is not None:
                    replays[key] = request_id  # the same key twice in one batch is a replay too
                self._audit(s, "request.received", request_id, actor=actor,
                            detail={"subject_hashes": hashes, "dataset": dataset, "dry_run": dry_run,
                                    "regime": regime, "data_map_digest": map_digest, **(filing.origin or {}),
                                    **({"derived": derived} if derived else {})})
                tasks = [Task(id=p.id, request_id=request_id, target=p.target, kind=p.kind, position=p.position,
                              after=list(p.after), status=p.status, reason=p.reason, attempts=0,
                              carried_deleted=0, finished_at=received if p.status == "skipped" else None)
                         for p in filing.tasks]
                tasks.sort(key=lambda t: t.position)
                s.add_all(tasks)
                self._audit(s, "request.planned", request_id, actor=actor,
                            detail={"targets": [t.target for t in tasks]})
                hold = hold_on(holds, hashes_of(request))
                pending = [t for t in tasks if t.status == "pending"]
                if hold is not None:
                    self._park(s, request, pending, "held", f"legal hold: {hold.reason}", actor=actor, tasks=tasks)
                elif dataset is not None and not dry_run:  # a whole source goes only with an admin's approval
                    self._park(s, request, pending, "awaiting_approval",
                               "a dataset erasure waits for an admin's approval", actor=actor, tasks=tasks)
                dispatches += self._release_ready(s, request, tasks)
                self._refresh(s, request, actor=actor, tasks=tasks)
                filed.append((request_id, True))
        self._stored_maps.add(map_digest)  # committed
        return filed, dispatches

    def _replays(self, keyed: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Idempotency key -> the request filed with it; a key used for a different request is a conflict."""
        if not keyed:
            return {}
        with self.sessions() as s:
            rows = s.execute(select(Request.idempotency_key, Request.idempotency_digest, Request.id)
                             .where(among(s, Request.idempotency_key, {k for k, _ in keyed}))).all()
        known = {key: (digest, request_id) for key, digest, request_id in rows}
        replays: dict[str, str] = {}
        for key, digest in keyed:
            if key in known:
                if known[key][0] != digest:
                    raise IdempotencyConflict("this idempotency key was already used for a different request")
                replays[key] = known[key][1]
        return replays

