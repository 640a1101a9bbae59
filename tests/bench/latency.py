"""Small-request latency: one request x 4 memory targets, submit to completed, filed one after another.

Bare Celery's side is the same shape: 4 no-op tasks (``tests.bench.noop``) sent at once, and the clock
stops when the 4th has run (a Redis counter, read every millisecond). Lethe's side is what a caller of
``lethe submit --wait`` gets: ``Lethe.submit`` then ``Lethe.wait`` with its default polling, through the
same kind of worker (``-c 2``) on the same Redis, with the PostgreSQL ledger. Each side files ``requests``
of them one after another (the next only once the last is done) and reports p50 and p99; the ratio is
lethe's over bare Celery's. The ledger's own view (``completed_at - received_at``, no polling in it) is
reported beside it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from tests.bench.orchestration import BIN, BROKER, TARGETS, running_lethe
from tests.fixtures.services import running_process


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000}


def bare_round_trips(requests: int, workdir: Path, url: str = BROKER) -> dict[str, Any]:
    """``requests`` round trips of 4 no-op Celery tasks, one after another, through ``celery worker -c 2``."""
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    env = {**os.environ, "BENCH_BROKER": url, "PYTHONPATH": str(Path.cwd())}
    args = [str(BIN / "celery"), "-A", "tests.bench.noop", "worker", "-c", "2", "--loglevel", "WARNING",
            "--without-mingle", "--without-gossip"]
    seconds = []
    with running_process(args, env, workdir / "noop-worker.log"):
        from tests.bench.noop import app

        with app.connection_for_write(url) as connection:
            producer = connection.Producer()
            for n in range(-1, requests):  # the first (-1) warms the worker up and is not counted
                done = int(broker.get("bench:done") or 0)
                start = time.perf_counter()
                for target in range(TARGETS):
                    app.send_task("bench.noop", args=[f"{n}/{target}"], producer=producer)
                while int(broker.get("bench:done") or 0) < done + TARGETS:
                    time.sleep(0.001)
                if n >= 0:
                    seconds.append(time.perf_counter() - start)
    return {"requests": requests, **percentiles(seconds)}


def lethe_round_trips(requests: int, workdir: Path, url: str = BROKER) -> dict[str, Any]:
    """``requests`` erasure requests x 4 memory targets, each submitted and waited for before the next."""
    seconds = []
    with running_lethe(workdir, url, db_prefix="lethe_latency") as (lethe, engine, _worker):
        for n in range(requests):
            start = time.perf_counter()
            request_id, _ = lethe.submit({"user_id": f"u{n}"})
            status = lethe.wait(request_id, timeout=60)
            seconds.append(time.perf_counter() - start)
            assert status["status"] == "completed", f"request {n} ended {status['status']}"
        with engine.connect() as conn:
            ledger = [float(r[0]) for r in conn.execute(text(
                "SELECT extract(epoch FROM completed_at - received_at) FROM requests WHERE actor = 'cli' "
                "ORDER BY received_at OFFSET 1"))]  # the warm-up is the first
            problems = lethe.ledger.verify()
    return {"requests": requests, **percentiles(seconds),
            "ledger": percentiles(ledger), "ledger_verified": problems == []}


def bench_latency(requests: int, workdir: Path, url: str = BROKER) -> dict[str, Any]:
    """Lethe's submit-to-completed latency over ``requests`` small requests against bare Celery's round trip
    of 4 tasks, as p50 and p99 and their ratios (on the broker at ``url``, whose database is emptied first)."""
    workdir.mkdir(parents=True, exist_ok=True)
    bare = bare_round_trips(requests, workdir, url)
    lethe = lethe_round_trips(requests, workdir, url)
    return {"requests": requests, "targets": TARGETS, "celery_noop": bare, "lethe": lethe,
            "ratio_p50": lethe["p50_ms"] / bare["p50_ms"], "ratio_p99": lethe["p99_ms"] / bare["p99_ms"]}


if __name__ == "__main__":
    import json
    import tempfile

    from orchestrator import logs

    logs.configure(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        result = bench_latency(int(sys.argv[1]) if len(sys.argv) > 1 else 200, Path(tmp))
    print(json.dumps(result, indent=2))
