"""bench: a sql purge of one subject's rows on PostgreSQL (batches of their own transactions, a heartbeat
after each, then verify) against a bare ``DELETE … WHERE owner_id = …`` in one statement on an identical
table. The difference is the price of never holding one giant transaction or lock.

Each side gets its own freshly loaded, vacuumed and analysed table in the same temporary database, a
CHECKPOINT before it is timed, and three rounds alternate which side goes first (the median counts):
``rows`` rows of the subject, spread as every ``share``-th row among other owners' rows, and an index on
``owner_id`` (as an application table keyed by its owner has).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import create_engine, text

from tests.fixtures.services import temporary_database

SUBJECT = 4242


def load(url: str, table: str, rows: int, share: int) -> None:
    db = create_engine(url, isolation_level="AUTOCOMMIT")
    with db.connect() as conn:
        conn.execute(text(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, owner_id BIGINT NOT NULL, "
                          "photo TEXT NOT NULL, taken_at TIMESTAMPTZ NOT NULL DEFAULT now())"))
        conn.execute(text(f"INSERT INTO {table} (owner_id, photo) SELECT CASE WHEN i % :share = 0 THEN {SUBJECT} "
                          "ELSE -i END, 'photos/' || i || '.jpg' FROM generate_series(1, :n) AS i"),
                     {"n": share * rows, "share": share})
        conn.execute(text(f"CREATE INDEX ON {table} (owner_id)"))
        conn.execute(text(f"VACUUM ANALYZE {table}"))
    db.dispose()


def bare_delete(url: str, table: str) -> dict[str, Any]:
    db = create_engine(url)
    start = time.perf_counter()
    with db.begin() as conn:
        deleted = conn.execute(text(f"DELETE FROM {table} WHERE owner_id = :o"), {"o": SUBJECT}).rowcount
    seconds = time.perf_counter() - start
    db.dispose()
    return {"seconds": seconds, "deleted": deleted}


def lethe_purge(url: str, table: str, batch_size: int | None) -> dict[str, Any]:
    from orchestrator.identifiers import Subject
    from workers.targets.selectors import dispose_engine
    from workers.targets.sql import SqlConfig, SqlTarget

    sizes = {} if batch_size is None else {"batch_size": batch_size}
    target = SqlTarget(SqlConfig(name="bench", kind="sql", url=url, table=table, where={"owner_id": "{user_id}"},
                                 **sizes))
    subject = Subject({"user_id": str(SUBJECT)})
    beats = 0

    def beat(done: int | None = None) -> None:
        nonlocal beats
        beats += 1

    target.table()  # reflection is once per task; not part of the delete
    start = time.perf_counter()
    deleted = target.purge(subject, beat)
    purge_seconds = time.perf_counter() - start
    residue = target.verify(subject)
    result = {"seconds": purge_seconds, "with_verify_seconds": time.perf_counter() - start, "deleted": deleted,
              "batches": beats, "residue": residue, "level": target.level}
    dispose_engine(url)
    return result


def checkpoint(url: str) -> None:
    """Start each timed side from a clean WAL, so neither pays for the other's (or the load's) flushes."""
    db = create_engine(url, isolation_level="AUTOCOMMIT")
    with db.connect() as conn:
        conn.execute(text("CHECKPOINT"))
    db.dispose()


def bench_sql(rows: int, share: int = 10, batch_size: int | None = None, rounds: int = 3) -> dict[str, Any]:
    """lethe's batched purge of ``rows`` rows of one subject (1 row in ``share`` of the table) vs one bare
    DELETE, each side on a fresh table after a CHECKPOINT, ``rounds`` times alternating which side goes
    first; the ratio is of the median times (lethe / bare). ``batch_size`` None is the target's default."""
    bares: list[dict[str, Any]] = []
    lethes: list[dict[str, Any]] = []
    with temporary_database("lethe_bench") as url:
        for round_ in range(rounds):
            bare_table, lethe_table = f"photos_bare_{round_}", f"photos_lethe_{round_}"
            load(url, bare_table, rows, share)
            load(url, lethe_table, rows, share)
            for side in ("bare", "lethe") if round_ % 2 == 0 else ("lethe", "bare"):
                checkpoint(url)
                if side == "bare":
                    bares.append(bare_delete(url, bare_table))
                else:
                    lethes.append(lethe_purge(url, lethe_table, batch_size))
    bare, lethe = _median(bares), _median(lethes)
    if any(r["residue"] for r in lethes) or {r["deleted"] for r in lethes} != {r["deleted"] for r in bares}:
        raise AssertionError(f"the sides did not delete the same rows: {lethes} vs {bares}")
    return {"rows": bare["deleted"], "table_rows": rows * share, "batches": lethe["batches"], "rounds": rounds,
            "bare_delete": bare, "lethe_purge": lethe, "bare_seconds_all": [r["seconds"] for r in bares],
            "lethe_seconds_all": [r["seconds"] for r in lethes],
            "ratio": lethe["seconds"] / bare["seconds"],
            "with_verify_ratio": lethe["with_verify_seconds"] / bare["seconds"]}


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(results, key=lambda r: r["seconds"])[len(results) // 2]
