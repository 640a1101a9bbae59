"""A worker's batch costs the ledger a fixed number of statements, however many requests it spans.

Each statement is a round trip to PostgreSQL. The orchestration figure (make bench) is bound by them: a batch
that locked, read and flushed once per request took 8.9 statements per request where 0.9 will do. These
tests count statements, not seconds: the count is exact on any machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from orchestrator.ledger import Ledger, Outcome
from tests.fixtures.lethe import filed_tasks

pytestmark = pytest.mark.integration

@contextmanager
def counted(ledger: Ledger) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(" ".join(statement.split())[:80])

    event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count)


def batch_statements(ledger: Ledger, task_ids: list[str]) -> list[str]:
    """The statements of one claim and one completion of every task given, as a worker's chunk does them."""
    with counted(ledger) as statements:
        runs = ledger.claim_many(task_ids)
        ledger.complete_many([Outcome(run.task_id, 1, "bytes_reclaimed", (), None) for run in runs])
    return statements


def test_a_batch_takes_the_same_statements_for_4_requests_as_for_40(pg_ledger: Ledger) -> None:
    batch_statements(pg_ledger, filed_tasks(pg_ledger, 0, 1))  # the data map read once per process
    few = batch_statements(pg_ledger, filed_tasks(pg_ledger, 10, 4))
    many = batch_statements(pg_ledger, filed_tasks(pg_ledger, 100, 40))
    assert len(many) == len(few), sorted(set(many) - set(few)) or many
    locks = [s for s in many if s.startswith("SELECT 1 FROM requests")]
    assert not locks, "a request's row was locked again for its chain after the batch locked it"
    assert pg_ledger.verify() == []


@contextmanager
def texts(ledger: Ledger) -> Iterator[set[str]]:
    """The full text of every statement sent, but those that read rows back from an INSERT (RETURNING: a
    multi-row INSERT of audit entries or events, whose text grows with its rows by design)."""
    sent: set[str] = set()

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if "RETURNING" not in statement:
            sent.add(statement)

    event.listen(ledger.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(ledger.engine, "before_cursor_execute", record)


def test_a_batch_sends_the_same_statement_texts_for_4_requests_as_for_40(pg_ledger: Ledger) -> None:
    """Filing, claiming and completing: no statement's text grows with the batch. An IN list of 40 ids, or a
    multi-row INSERT of 160 tasks, is a statement psycopg parses again in Python (it caches none of more than
    50 parameters) and PostgreSQL plans again: 45% of filing's CPU and 6% of a worker's were that. As one
    array parameter, or psycopg's executemany, the text is the same for any size."""
    batch_statements(pg_ledger, filed_tasks(pg_ledger, 0, 1))  # what is read once per process
    with texts(pg_ledger) as few:
        batch_statements(pg_ledger, filed_tasks(pg_ledger, 10, 4))
    with texts(pg_ledger) as many:
        batch_statements(pg_ledger, filed_tasks(pg_ledger, 100, 40))
    assert many == few, [s[:160] for s in many - few]
    assert max(len(s) for s in many) < 4096  # psycopg's cache takes statements up to 4 KB
    assert pg_ledger.verify() == []
