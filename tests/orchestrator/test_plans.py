"""A worker's batch reads the ledger by index, whatever the ledger's size: no statement of its path reads a whole
table.

A batch that scans tasks, audit_log or completion_records costs in proportion to the ledger, so a bulk erasure
slows as it goes: at 10,000 requests the scans took 60% of PostgreSQL's time (make bench, docs/scaling.md).
PostgreSQL picks a scan when its cost model says so; these tests read the plans (EXPLAIN, which runs nothing)
of the statements a real batch sends, on a ledger big enough for the choice to matter.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import event, text

from orchestrator.ledger import Ledger, Outcome
from tests.fixtures.lethe import filed_tasks

pytestmark = pytest.mark.integration

LEDGER_TABLES = ("tasks", "requests", "audit_log", "completion_records", "outbox", "certificates")


def completed(ledger: Ledger, task_ids: list[str]) -> None:
    runs = ledger.claim_many(task_ids)
    ledger.complete_many([Outcome(run.task_id, 1, "bytes_reclaimed", (), None) for run in runs])


def batch_reads(ledger: Ledger, task_ids: list[str]) -> list[tuple[str, Any]]:
    """The single statements (not the executemany writes by primary key) of one claim and one completion."""
    sent: list[tuple[str, Any]] = []

    def keep(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if not executemany and re.match(r"\s*(SELECT|UPDATE|DELETE)\b", statement):
            sent.append((statement, parameters))

    event.listen(ledger.engine, "before_cursor_execute", keep)
    try:
        completed(ledger, task_ids)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", keep)
    return sent


def read_whole(plan: list[str]) -> list[str]:
    """The ledger tables a plan reads whole: by a sequential scan, or by an index scan with no condition (a
    walk of the whole index, as one that spares a sort does)."""
    whole = []
    for n, line in enumerate(plan):
        if m := re.search(r"Seq Scan on (\w+)", line):
            whole.append(m.group(1))
        elif m := re.search(r"Index (?:Only )?Scan using \w+ on (\w+)", line):
            node = []
            for below in plan[n + 1:]:
                if "->" in below:
                    break
                node.append(below)
            if not any("Index Cond:" in b for b in node):
                whole.append(m.group(1))
    return [t for t in whole if t in LEDGER_TABLES]


def test_a_batch_reads_a_big_ledger_by_index(pg_ledger: Ledger) -> None:
    """3,000 requests x 2 targets, 2,000 of them completed, the tables analysed: a batch of 40 requests reads
    none of the ledger's tables whole. With PostgreSQL's default planner costs it read completion_records
    whole here (and, at 10,000 requests, tasks and audit_log too)."""
    for first in range(0, 3000, 500):
        ids = filed_tasks(pg_ledger, first, 500)
        if first < 2000:
            completed(pg_ledger, ids)
    with pg_ledger.engine.begin() as conn:
        conn.execute(text(f"ANALYZE {', '.join(LEDGER_TABLES)}"))
    statements = batch_reads(pg_ledger, filed_tasks(pg_ledger, 5000, 40))
    assert len(statements) >= 5, statements  # the batch's reads were seen
    scans = []
    with pg_ledger.engine.connect() as conn:
        for statement, parameters in statements:
            plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
            if whole := read_whole(plan):
                scans.append((" ".join(statement.split())[:100], whole))
    assert not scans, "\n".join(f"{t}: {q}" for q, t in scans)
    assert pg_ledger.verify() == []
