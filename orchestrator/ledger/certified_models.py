"""The registered models a request's certificate names: the ones its targets quarantined or deleted, found
from the retrain events they queued with their completions (``lethe.model.retrain_requested``)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.ledger.common import EVENT_NAMESPACE, among
from orchestrator.ledger.models import AuditEntry, OutboxEvent, Task

MODEL_EVENT = "lethe.model.retrain_requested"  # the SPEC's event a target queues per model it acted on
EVENTS_PER_LOOKUP = 16
# Session.info key: request id -> models_acted_on, looked up for a whole batch of completions at once
MODELS_PREFETCHED = "lethe_models_prefetched"


def models_acted_on(s: Session, request_id: str, tasks: list[Task]) -> list[dict[str, Any]]:
    """The registered models (name, versions, action) a request quarantined or deleted, for its certificate:
    the retrain events its targets queued with their completions (see ``models_acted_on_many``)."""
    prefetched: dict[str, list[dict[str, Any]]] = s.info.get(MODELS_PREFETCHED, {})
    if request_id in prefetched:
        return prefetched[request_id]
    return models_acted_on_many(s, {request_id: tasks})[request_id]


def models_acted_on_many(s: Session, tasks_of: dict[str, list[Task]]) -> dict[str, list[dict[str, Any]]]:
    """``models_acted_on`` for many requests (request id -> its tasks) in two queries, not two per request:
    a batch of completions issues many certificates at once. Each retrain event's id is uuid5 of the
    completion's audit hash and its position (``_emit``), and each ``task.completed`` entry says how many
    events it announced, so only those are looked up, by their unique ids, never by scanning the outbox.
    An entry written before it said so (a request in flight across the upgrade) is looked up a few
    positions at a time until a position is missing."""
    target_of = {t.id: t.target for tasks in tasks_of.values() for t in tasks}
    # hash -> (request, target, first position to look up, how many, whether the entry said how many)
    positions: dict[str, tuple[str, str, int, int, bool]] = {}
    for request_id, task_id, h, detail in s.execute(
            select(AuditEntry.request_id, AuditEntry.task_id, AuditEntry.hash, AuditEntry.detail).where(
                among(s, AuditEntry.request_id, tasks_of), AuditEntry.action == "task.completed")):
        said = "announced" in detail
        count = detail["announced"] if said else EVENTS_PER_LOOKUP
        if count:
            positions[h] = (request_id or "", target_of.get(task_id or "", ""), 0, count, said)
    found: dict[str, list[tuple[int, str, int, dict[str, Any]]]] = {request_id: [] for request_id in tasks_of}
    order = {request_id: {t.target: n for n, t in enumerate(tasks)} for request_id, tasks in tasks_of.items()}
    while positions:
        wanted = {str(uuid.uuid5(EVENT_NAMESPACE, f"{h}/{n}")): (h, n)
                  for h, (_, _, start, count, _) in positions.items() for n in range(start, start + count)}
        ids = list(wanted)
        hits: dict[str, int] = {}
        for first in range(0, len(ids), 10_000):  # bound the statement's parameters
            page = among(s, OutboxEvent.event_id, ids[first:first + 10_000])
            for event_id, event_type, body in s.execute(select(OutboxEvent.event_id, OutboxEvent.type, OutboxEvent.body)
                                                        .where(page)):
                h, n = wanted[event_id]
                hits[h] = hits.get(h, 0) + 1
                if event_type == MODEL_EVENT:
                    request_id, target = positions[h][:2]
                    rank = order[request_id].get(target, len(order[request_id]))
                    found[request_id].append((rank, target, n, json.loads(body)["data"]))
        # Only an entry that did not say how many it announced, and filled its whole batch, may have more.
        positions = {h: (request_id, target, start + count, EVENTS_PER_LOOKUP, False)
                     for h, (request_id, target, start, count, said) in positions.items()
                     if not said and hits.get(h) == count}
    return {request_id: [{"target": target, "registered_model": data["registered_model"],
                          "versions": data["versions"], "action": data["action"]}
                         for _, target, _, data in sorted(models, key=lambda f: f[:3])]
            for request_id, models in found.items()}
