"""Planner: a submission and a data map become a filing: a request id, the identities resolved, and one task
per target, with deterministic ids and ``after``."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.datamap import DataMap
from orchestrator.identifiers import Subject
from orchestrator.identities import Resolution
from orchestrator.ledger import Filing, LedgerError, PlannedTask

# Namespace for task ids: uuid5(namespace, "<request id>/<target>") is the same on every host and retry.
TASK_NAMESPACE = uuid.UUID("6c1e7a0e-0b5e-4c8e-9a57-1e7e1e7e1e7e")


def task_id(request_id: str, target: str) -> str:
    return str(uuid.uuid5(TASK_NAMESPACE, f"{request_id}/{target}"))


def plan(request_id: str, datamap: DataMap, subject: Subject,
         only: Collection[str] | None = None, dataset: str | None = None,
         resolution: Resolution | None = None) -> list[PlannedTask]:
    """One task per target, or per target named in ``only`` (a follow-up erasure of some targets, with their
    replicas) or in the dataset's selectors (a dataset erasure); ``after`` then only waits for targets that
    are planned too.
    A kind the ``resolution`` found counts as carried; one it looked for and did not find skips its targets
    with the resolution named."""
    if dataset is not None:
        only = set(datamap.datasets[dataset])
    elif only is not None:
        only = datamap.with_replicas(only)  # data written to a primary again is in its replicas too
    resolution = resolution or Resolution()
    carried = set(subject) | resolution.found()
    tasks = []
    for position, target in enumerate(datamap.targets):
        if only is not None and target.name not in only:
            continue
        # A dataset's selectors are literal: they need no identifier.
        missing = [] if dataset is not None else sorted(target.required_identifiers() - carried)
        unresolved = [why for kind in missing if (why := resolution.reason_missing(kind))]
        tasks.append(
            PlannedTask(
                id=task_id(request_id, target.name),
                target=target.name,
                kind=target.kind,
                position=position,
                after=tuple(a for a in target.after if only is None or a in only),
                status="skipped" if missing else "pending",
                reason=(f"not erased: {'; '.join(unresolved)}" if unresolved
                        else f"not erased: the request carries no {', '.join(missing)}" if missing else None),
            )
        )
    return tasks


@dataclass(frozen=True)
class Submission:
    """One erasure request as a door received it: the subject (validated against the map; empty for a dataset
    erasure), the stored idempotency key, its origin, and the identities' results when the door resolved
    them already (a bulk submission resolves every subject before it files any)."""

    subject: Subject
    idempotency_key: str | None = None
    origin: dict[str, Any] | None = None
    resolution: Resolution | None = None


def plan_filings(datamap: DataMap, submissions: Sequence[Submission], subject_key: bytes, *,
                 only_targets: Collection[str] | None = None, dataset: str | None = None) -> list[Filing]:
    """What the ledger records for each submission: a new request id, the identities resolved before
    anything is filed (docs/decisions.md: their values are fixed before any purge, and a lookup database that
    does not answer files nothing), and the plan of its tasks."""
    if dataset is not None and (dataset not in datamap.datasets or any(len(s.subject) for s in submissions)):
        known = ", ".join(sorted(datamap.datasets)) or "none"
        raise LedgerError(f"unknown dataset {dataset!r} (the data map declares: {known})")
    filings = []
    for submission in submissions:
        resolution = submission.resolution
        if resolution is None and dataset is None:
            resolution = datamap.resolve(submission.subject)
        request_id = str(uuid.uuid4())
        tasks = plan(request_id, datamap, submission.subject, only=only_targets, dataset=dataset,
                     resolution=resolution)
        filings.append(Filing(request_id, submission.subject, tuple(tasks), submission.idempotency_key,
                              submission.origin, derived=tuple(resolution.derived(subject_key)) if resolution else (),
                              derived_values=resolution.sealable() if resolution else {}))
    return filings
