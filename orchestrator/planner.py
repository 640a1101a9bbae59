"""Planner: a request and a data map become one task per target, with deterministic ids and ``after``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from orchestrator.datamap import DataMap
from orchestrator.identifiers import Subject

# Namespace for task ids: uuid5(namespace, "<request id>/<target>") is the same on every host and retry.
TASK_NAMESPACE = uuid.UUID("6c1e7a0e-0b5e-4c8e-9a57-1e7e1e7e1e7e")


def task_id(request_id: str, target: str) -> str:
    return str(uuid.uuid5(TASK_NAMESPACE, f"{request_id}/{target}"))


@dataclass(frozen=True)
class PlannedTask:
    id: str
    target: str
    kind: str
    position: int
    after: tuple[str, ...]
    status: str  # "pending", or "skipped" when the request lacks an identifier the selector needs
    reason: str | None = None


def plan(request_id: str, datamap: DataMap, subject: Subject) -> list[PlannedTask]:
    tasks = []
    for position, target in enumerate(datamap.targets):
        missing = sorted(target.required_identifiers() - set(subject))
        tasks.append(
            PlannedTask(
                id=task_id(request_id, target.name),
                target=target.name,
                kind=target.kind,
                position=position,
                after=tuple(target.after),
                status="skipped" if missing else "pending",
                reason=f"not erased: the request carries no {', '.join(missing)}" if missing else None,
            )
        )
    return tasks
