"""The certificate names every model a request's targets acted on, found by the events each completion says
it announced: none looked up for a completion that announced none, all of them for one that announced many,
and still all of them for a completion recorded before completions said how many."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger, Outcome
from orchestrator.ledger.certified_models import EVENTS_PER_LOOKUP, MODEL_EVENT, models_acted_on_many
from orchestrator.ledger.models import AuditEntry, Task
from tests.fixtures.lethe import file_request
from tests.orchestrator.test_round_trips import counted

MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: registry, kind: memory, store: registry, match: {owner: "{user_id}"}}
  - {name: sessions, kind: memory, store: sessions, match: {owner: "{user_id}"}}
"""
MANY = EVENTS_PER_LOOKUP + 4  # more than one lookup's worth


def model_event(n: int) -> tuple[str, dict[str, Any]]:
    return MODEL_EVENT, {"registered_model": f"model-{n:02d}", "versions": [str(n)], "action": "quarantine"}


def erased(ledger: Ledger, value: str, registry_events: int) -> str:
    """A request whose registry target announced ``registry_events`` models; its sessions target none."""
    datamap = DataMap.parse(MAP)
    request_id, _, _ = file_request(ledger, datamap, datamap.parse_subject({"user_id": value}))
    with ledger.sessions() as s:
        tasks = {t.target: t.id for t in s.scalars(select(Task).filter_by(request_id=request_id))}
    for run in ledger.claim_many(list(tasks.values())):
        events = tuple(model_event(n) for n in range(registry_events)) if run.target == "registry" else ()
        ledger.complete_many([Outcome(run.task_id, 1, "bytes_reclaimed", events)])
    return request_id


def test_every_model_announced_is_named_and_no_other(ledger: Ledger) -> None:
    many = erased(ledger, "1", MANY)
    none = erased(ledger, "2", 0)
    assert [m["registered_model"] for m in ledger.certificate(many)["models"]] == [
        f"model-{n:02d}" for n in range(MANY)]
    assert "models" not in ledger.certificate(none)
    assert ledger.verify() == []


def test_completions_that_announced_nothing_look_nothing_up(pg_ledger: Ledger) -> None:
    erased(pg_ledger, "0", 0)  # the data map read once per process
    with counted(pg_ledger) as statements:
        erased(pg_ledger, "1", 0)
    assert not [s for s in statements if "FROM outbox" in s]


def test_a_completion_recorded_before_completions_said_how_many_still_names_its_models(ledger: Ledger) -> None:
    request_id = erased(ledger, "1", MANY)
    with ledger.sessions.begin() as s:  # as lethe wrote task.completed before it said "announced"
        for entry in s.scalars(select(AuditEntry).filter_by(request_id=request_id, action="task.completed")):
            entry.detail = {k: v for k, v in entry.detail.items() if k != "announced"}
        tasks = list(s.scalars(select(Task).filter_by(request_id=request_id)))
        models = models_acted_on_many(s, {request_id: tasks})[request_id]
        s.rollback()
    assert [m["registered_model"] for m in models] == [f"model-{n:02d}" for n in range(MANY)]
