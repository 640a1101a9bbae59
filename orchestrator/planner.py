"""Planner: a request and a data map become one task per target, with deterministic ids and ``after``."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from orchestrator.datamap import DataMap
from orchestrator.identifiers import Subject
from orchestrator.identities import Resolution
from orchestrator.ledger import PlannedTask

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
