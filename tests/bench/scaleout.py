"""Scale-out: the orchestration workload (N requests x 4 memory targets through Redis and the PostgreSQL
ledger) with 1, 2 and 4 worker processes, against bare Celery with as many processes in the same run.

Adding workers helps lethe only as far as its ledger lets them run side by side, so besides throughput
the figure samples PostgreSQL every 0.1 s while lethe runs: how often the audit chain's advisory lock (the
one lock every append takes) is held and waited for, and how many PostgreSQL connections the workers hold.
The figure's ratio is the scaling lethe keeps: its speedup from 1 to the most workers, divided by bare
Celery's speedup over the same step (1.0: lethe scales as well as Celery does on this machine).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from orchestrator.ledger.common import AUDIT_LOCK_KEY
from tests.bench.orchestration import BROKER, TARGETS, bare_celery, lethe_requests
from tests.fixtures.services import PG_ADMIN_URL

DB_PREFIX = "lethe_scaleout"
SAMPLE_SECONDS = 0.1


class LockSampler:
    """Samples pg_locks and pg_stat_activity of the bench's databases (``DB_PREFIX_…``) in a thread."""

    QUERY = text(
        "SELECT count(*) FILTER (WHERE l.granted), count(*) FILTER (WHERE NOT l.granted), "
        "       (SELECT count(*) FROM pg_stat_activity WHERE datname LIKE :like) "
        "FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.classid = :hi AND l.objid = :lo AND d.datname LIKE :like")

    def __init__(self) -> None:
        self.samples: list[tuple[int, int, int]] = []  # (holding the lock, waiting for it, connections)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_size=1)

    def _run(self) -> None:
        params = {"hi": AUDIT_LOCK_KEY >> 32, "lo": AUDIT_LOCK_KEY & 0xFFFF_FFFF, "like": f"{DB_PREFIX}_%"}
        with self._engine.connect() as conn:
            while not self._stop.wait(SAMPLE_SECONDS):
                held, waiting, connections = conn.execute(self.QUERY, params).one()
                self.samples.append((int(held), int(waiting), int(connections)))

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()

    def summary(self) -> dict[str, Any]:
        n = len(self.samples) or 1
        # share_held near 1 means the lock, not the workers, sets the pace: throughput ~ 1 / hold time.
        return {"samples": len(self.samples),
                "share_held": round(sum(1 for h, _, _ in self.samples if h) / n, 3),
                "share_waiting": round(sum(1 for _, w, _ in self.samples if w) / n, 3),
                "mean_waiters": round(sum(w for _, w, _ in self.samples) / n, 2),
                "peak_connections": max((c for _, _, c in self.samples), default=0)}


def bench_scaleout(requests: int, workdir: Path, workers: tuple[int, ...] = (1, 2, 4),
                   url: str = BROKER) -> dict[str, Any]:
    """For each worker count: bare Celery over ``requests`` x 4 no-op tasks, then lethe over ``requests``
    erasure requests x 4 memory targets, both through ``-c <workers>`` worker processes."""
    runs = []
    for n in workers:
        work = workdir / f"workers-{n}"
        work.mkdir(parents=True, exist_ok=True)
        bare = bare_celery(requests * TARGETS, work, url=url, concurrency=n)
        with LockSampler() as locks:
            lethe = lethe_requests(requests, work, url=url, concurrency=n, db_prefix=DB_PREFIX)
        runs.append({
            "workers": n,
            "bare_tasks_per_second": round(bare["tasks_per_second"], 1),
            "lethe_tasks_per_second": round(requests * TARGETS / lethe["seconds"], 1),
            "lethe_requests_per_second": round(lethe["requests_per_second"], 1),
            "ratio": round(lethe["seconds"] / bare["seconds"], 3),
            "chain_lock": locks.summary(),
            "ledger_verified": lethe["ledger_verified"],
            "cpu_seconds": lethe["cpu_seconds"],
        })
    first, last = runs[0], runs[-1]
    for run in runs:
        run["lethe_speedup"] = round(run["lethe_tasks_per_second"] / first["lethe_tasks_per_second"], 3)
        run["bare_speedup"] = round(run["bare_tasks_per_second"] / first["bare_tasks_per_second"], 3)
    return {"requests": requests, "tasks": requests * TARGETS, "runs": runs,
            "ratio": round(last["lethe_speedup"] / last["bare_speedup"], 3),
            "meaning": f"lethe's speedup from {first['workers']} to {last['workers']} workers / bare Celery's"}


def describe(result: dict[str, Any]) -> list[str]:
    """The figure's lines for `make bench`."""
    lines = [f"scale-out: {result['requests']:,} requests x 4 targets per run; scaling kept {result['ratio']:.2f}x "
             f"({result['meaning']})"]
    for run in result["runs"]:
        lock = run["chain_lock"]
        lines.append(
            f"  {run['workers']} worker(s): lethe {run['lethe_tasks_per_second']:,.0f} tasks/s "
            f"({run['lethe_requests_per_second']:,.0f} requests/s, x{run['lethe_speedup']:.2f}), bare Celery "
            f"{run['bare_tasks_per_second']:,.0f} tasks/s (x{run['bare_speedup']:.2f}) -> {run['ratio']:.2f}x; "
            f"chain lock held in {lock['share_held']:.0%} of samples, waited on in {lock['share_waiting']:.0%} "
            f"({lock['mean_waiters']:.2f} waiting on average), {lock['peak_connections']} PostgreSQL connections "
            f"at peak; verified: "
            f"{run['ledger_verified']}")
    return lines


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    from orchestrator import logs

    logs.configure(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        result = bench_scaleout(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, Path(tmp))
    print("\n".join(describe(result)))
    print(json.dumps(result, indent=2))
