"""kind: sql end to end: requests through a real Celery worker on Redis, the application's tables on
PostgreSQL, ordered by `after` so the foreign key never refuses; a dry run deletes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.service import Lethe
from workers.targets.selectors import dispose_engine

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - name: app-orders
    kind: sql
    url: {url}
    table: app.orders
    where: {{user_id: "{{user_id}}"}}
    batch_size: 2
  - name: app-users
    kind: sql
    url: {url}
    table: app.users
    where: {{id: "{{user_id}}"}}
    after: [app-orders]
    vacuum: true
"""
USERS = [12, 123, 1234, 7]


def counts(url: str) -> dict[str, dict[int, int]]:
    db = create_engine(url)
    with db.connect() as conn:
        users = dict(conn.execute(text("SELECT id, count(*) FROM app.users GROUP BY id")).all())
        orders = dict(conn.execute(text("SELECT user_id, count(*) FROM app.orders GROUP BY user_id")).all())
    db.dispose()
    return {"users": users, "orders": orders}


@pytest.fixture
def app_url(pg_database: str) -> Iterator[str]:
    db = create_engine(pg_database)
    with db.begin() as conn:
        conn.execute(text("CREATE SCHEMA app"))
        conn.execute(text("CREATE TABLE app.users (id BIGINT PRIMARY KEY, email TEXT)"))
        conn.execute(text("CREATE TABLE app.orders (id SERIAL PRIMARY KEY, user_id BIGINT NOT NULL "
                          "CONSTRAINT fk_orders_user REFERENCES app.users (id))"))
        conn.execute(text("INSERT INTO app.users VALUES (:i, :e)"), [{"i": u, "e": f"{u}@example.org"} for u in USERS])
        conn.execute(text("INSERT INTO app.orders (user_id) VALUES (:u)"), [{"u": u} for u in USERS for _ in range(5)])
    db.dispose()
    yield pg_database
    dispose_engine(pg_database)


@pytest.fixture
def running(app_url: str, redis_broker: str, write_map: Callable[[str], Path],
            make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    lethe = make_lethe(broker_url=redis_broker, data_map=write_map(MAP.format(url=app_url)))
    with lethe.embedded_worker(concurrency=2):
        yield lethe


def test_dry_run_counts_the_rows_and_deletes_none(running: Lethe, app_url: str) -> None:
    """A dry run reports, per table, the rows a purge would delete, and every row is still there."""
    before = counts(app_url)
    request_id, _ = running.submit({"user_id": "12"}, dry_run=True)
    status = running.wait(request_id, timeout=60)
    assert status["status"] == "completed" and status["dry_run"] is True, status
    assert {t["target"]: t["deleted"] for t in status["tasks"]} == {"app-orders": 5, "app-users": 1}
    assert counts(app_url) == before


def test_erasure_deletes_the_subjects_rows_in_order_and_nobody_elses(running: Lethe, app_url: str) -> None:
    """Orders go first (after:), so the users row's foreign key never refuses; 123, 1234 and 7 keep every
    row; the users table was vacuumed and its level says so."""
    request_id, _ = running.submit({"user_id": "12"})
    status = running.wait(request_id, timeout=60)
    assert status["status"] == "completed", status
    tasks = {t["target"]: t for t in status["tasks"]}
    assert tasks["app-orders"]["deleted"] == 5 and tasks["app-users"]["deleted"] == 1
    assert tasks["app-orders"]["level"] == "invisible" and tasks["app-users"]["level"] == "unindexed"
    after = counts(app_url)
    assert after == {"users": {u: 1 for u in USERS if u != 12}, "orders": {u: 5 for u in USERS if u != 12}}
