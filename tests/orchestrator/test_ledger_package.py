"""The ledger as a package (issue 21): it stores and returns, it does not plan, and a stored data map is run
only while its text still has the digest requests recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger, LedgerError
from orchestrator.ledger.models import DataMapSnapshot
from orchestrator.service import Lethe
from tests.fixtures.lethe import file_request
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
stores:
  - {name: billing-archive, not_erased: "kept 10 years by tax law"}
"""
# What a database writer puts in its place: every photo of everyone, under the same digest.
EDITED = MAP.replace('match: {owner: "{user_id}"}', 'match: {kind: photo}')


def test_importing_the_ledger_pulls_in_no_worker_module_and_no_data_map() -> None:
    """The source of truth does not depend on the adapters: a fresh interpreter importing the ledger has
    loaded no ``workers`` module, no data map and no planner."""
    code = ("import json, sys; import orchestrator.ledger; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'workers' or m.startswith('workers.') "
            "or m in ('orchestrator.datamap', 'orchestrator.planner', 'orchestrator.identities'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert json.loads(result.stdout) == []


def test_a_stored_map_is_returned_as_its_text(ledger: Ledger) -> None:
    """The ledger returns the text it stored (the service parses it); the certificate still lists the map's
    exemptions, read from that text."""
    datamap = DataMap.parse(MAP)
    request_id, _, dispatches = file_request(ledger, datamap, datamap.parse_subject({"user_id": "12"}))
    assert ledger.map_text(datamap.digest) == MAP
    ledger.claim(dispatches[0].task_id)
    ledger.complete(dispatches[0].task_id, 1, 0)
    assert ledger.certificate(request_id)["exemptions"] == [
        {"store": "billing-archive", "reason": "kept 10 years by tax law"}]


def test_a_stored_map_rewritten_in_the_database_is_refused(ledger: Ledger, ledger_url: str) -> None:
    """A writer who rewrites a stored map (keeping its digest as the key) does not get it run: the ledger
    checks the text against the digest and refuses, with a clear error."""
    datamap = DataMap.parse(MAP)
    file_request(ledger, datamap, datamap.parse_subject({"user_id": "12"}))
    with ledger.sessions.begin() as s:
        s.execute(update(DataMapSnapshot).where(DataMapSnapshot.digest == datamap.digest).values(text=EDITED))
    fresh = Ledger(ledger_url, ledger.subject_key, ledger.signing_key)  # a new process: nothing cached
    try:
        with pytest.raises(LedgerError, match="does not match its digest"):
            fresh.map_text(datamap.digest)
    finally:
        fresh.engine.dispose()


def test_a_task_planned_from_a_rewritten_map_fails_and_deletes_nothing(
        make_lethe: Callable[..., Lethe], write_map: Callable[[str], Path]) -> None:
    """Through the worker: the task fails with the ledger's error and no store is touched (the edited map
    would have deleted every subject's photos)."""
    MemoryStore.add("photos", {"owner": "12", "kind": "photo"}, {"owner": "13", "kind": "photo"})
    path = write_map(MAP)
    filer = make_lethe(data_map=path)
    datamap = filer.load_map()
    request_id, _, dispatches = file_request(filer.ledger, datamap, datamap.parse_subject({"user_id": "12"}))
    with filer.ledger.sessions.begin() as s:
        s.execute(update(DataMapSnapshot).values(text=EDITED))
    worker = make_lethe(data_map=path)  # another process: it reads the map from the ledger
    with worker.embedded_worker():
        worker.send(dispatches)
        status = worker.wait(request_id, timeout=30)
    assert status["status"] == "failed"
    assert "does not match its digest" in (status["tasks"][0]["error"] or "")
    assert sorted(r["owner"] for r in MemoryStore.records("photos")) == ["12", "13"]
