"""Orchestration overhead and bulk scale: lethe against bare Celery on the same broker and worker settings.

Both sides get the same number of tasks on the same Redis, each through a prefork worker with ``-c 2``:
bare Celery runs no-op tasks (``tests.bench.noop``), lethe files N erasure requests over 4 in-memory targets
(``Lethe.submit_many``, as ``lethe submit --subjects-file`` does) and runs them end to end through the
PostgreSQL ledger: claim, purge, verify, completion record, audit chain, certificate, outbound events.
The clock runs from the first submission to the last task done (bare) or the last request completed
(lethe). While each side runs, the peak memory of every process involved is sampled.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine, create_engine, text

from orchestrator.certificates import create_private_key
from orchestrator.config import Settings
from orchestrator.service import Lethe
from tests.fixtures.services import running_process, temporary_database

BIN = Path(sys.executable).parent
BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
KEY = "be" * 32
TARGETS = 4


class Watch:
    """Samples named process groups (a process, or a process and its children) every 0.2 s: each group's
    peak resident memory (MiB) and the CPU seconds it used while watched."""

    def __init__(self) -> None:
        self.groups: dict[str, tuple[psutil.Process, bool]] = {}
        self.peaks: dict[str, float] = {}
        self._cpu_start: dict[str, float] = {}
        self._cpu_last: dict[str, dict[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int, children: bool = False) -> None:
        self.groups[name] = (psutil.Process(pid), children)
        self._sample(name)
        self._cpu_start[name] = sum(self._cpu_last[name].values())

    def _sample(self, name: str) -> None:
        root, children = self.groups[name]
        try:
            procs = [root, *(root.children(recursive=True) if children else [])]
        except psutil.Error:
            return
        rss, cpu = 0, self._cpu_last.setdefault(name, {})
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        self.peaks[name] = max(self.peaks.get(name, 0.0), rss / 2**20)

    def cpu_seconds(self) -> dict[str, float]:
        return {name: round(sum(self._cpu_last[name].values()) - self._cpu_start[name], 2) for name in self.groups}

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name in list(self.groups):
                self._sample(name)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for name in self.groups:
            self._sample(name)


def postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("postgres", "postmaster")]


def _memory_of_services(memory: Watch, broker: redis.Redis) -> None:
    memory.watch("bench (submitter)", os.getpid())
    memory.watch("redis-server", int(broker.info("server")["process_id"]))
    for pid in postgres_pids()[:1]:  # the postmaster; backends are its children
        memory.watch("postgresql (all backends)", pid, children=True)


def bare_celery(tasks: int, workdir: Path, progress: Progress | None = None, url: str = BROKER,
                concurrency: int = 2) -> dict[str, Any]:
    """Seconds for ``tasks`` no-op Celery tasks, sent at once, through ``celery worker -c <concurrency>``."""
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    env = {**os.environ, "BENCH_BROKER": url, "PYTHONPATH": str(Path.cwd())}
    args = [str(BIN / "celery"), "-A", "tests.bench.noop", "worker", "-c", str(concurrency), "--loglevel", "WARNING",
            "--without-mingle", "--without-gossip"]
    with running_process(args, env, workdir / "noop-worker.log") as worker, Watch() as memory:
        from tests.bench.noop import app

        connection = app.connection_for_write(url)
        producer = connection.Producer()
        app.send_task("bench.noop", args=["warm-up"], producer=producer)
        while int(broker.get("bench:done") or 0) < 1:
            time.sleep(0.05)
        _memory_of_services(memory, broker)
        memory.watch("worker (main + pool)", worker.pid, children=True)
        bar = progress.add_task("bare Celery", total=tasks) if progress else None
        start = time.perf_counter()
        for i in range(tasks):
            app.send_task("bench.noop", args=[str(i)], producer=producer)
        connection.release()
        while (done := int(broker.get("bench:done") or 0) - 1) < tasks:
            if progress and bar is not None:
                progress.update(bar, completed=done)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        if progress and bar is not None:
            progress.update(bar, completed=tasks)
    return {"tasks": tasks, "seconds": seconds, "tasks_per_second": tasks / seconds,
            "peak_mib": {k: round(v, 1) for k, v in memory.peaks.items()}, "cpu_seconds": memory.cpu_seconds()}


@contextmanager
def running_lethe(workdir: Path, url: str = BROKER, concurrency: int = 2,
                  db_prefix: str = "lethe_bench") -> Iterator[tuple[Lethe, Engine, subprocess.Popen[bytes]]]:
    """A migrated ledger on a new database, the 4-memory-target data map and ``lethe worker -c <concurrency>``
    on the broker at ``url`` (emptied first), warmed up by one completed request; yields the submitting
    ``Lethe``, an engine on the ledger for the figure's own queries, and the worker's process."""
    redis.Redis.from_url(url).flushdb()
    targets = "\n".join(f'  - {{name: t{i}, kind: memory, store: s{i}, match: {{owner: "{{user_id}}"}}}}'
                        for i in range(TARGETS))
    data_map = workdir / "bench-map.yaml"
    data_map.write_text(f"version: 1\nidentifiers: [user_id]\ntargets:\n{targets}\n")
    signing = workdir / "signing.pem"
    if not signing.exists():
        create_private_key(signing)
    with temporary_database(db_prefix) as db:
        env = {**os.environ, "LETHE_BROKER_URL": url, "LETHE_DATABASE_URL": db, "LETHE_SUBJECT_KEY": KEY,
               "LETHE_SIGNING_KEY": str(signing), "LETHE_DATA_MAP": str(data_map), "LETHE_LOG_LEVEL": "WARNING"}
        lethe = Lethe(Settings(broker_url=url, database_url=db, subject_key=KEY, signing_key=signing,
                               data_map=data_map, log_level="WARNING"))
        lethe.migrate()  # before the worker starts
        engine = create_engine(db.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with running_process([str(BIN / "lethe"), "worker", "-c", str(concurrency), "--loglevel", "WARNING"],
                                 env, workdir / "lethe-worker.log") as worker:
                lethe.wait(lethe.submit({"user_id": "warm-up"})[0], timeout=120, interval=0.05)
                yield lethe, engine, worker
        finally:
            engine.dispose()
            lethe.ledger.engine.dispose()


def lethe_requests(requests: int, workdir: Path, progress: Progress | None = None,
                   url: str = BROKER, concurrency: int = 2, db_prefix: str = "lethe_bench") -> dict[str, Any]:
    """Seconds for ``requests`` erasure requests x 4 memory targets, filed at once, through ``lethe worker -c
    <concurrency>`` (on a new database named ``<db_prefix>_…``)."""
    with running_lethe(workdir, url, concurrency, db_prefix) as (lethe, engine, worker):
        with Watch() as memory:
            _memory_of_services(memory, redis.Redis.from_url(url))
            memory.watch("worker (main + pool)", worker.pid, children=True)
            filed_bar = progress.add_task("lethe: filed", total=requests) if progress else None
            done_bar = progress.add_task("lethe: completed", total=requests) if progress else None
            subjects = [{"user_id": f"u{i}"} for i in range(requests)]
            start = time.perf_counter()
            filer = threading.Thread(target=lethe.submit_many, args=(subjects,), kwargs={
                "on_progress": (lambda n: progress.update(filed_bar, completed=n)) if progress and filed_bar is not None
                else None})
            filer.start()
            with engine.connect() as conn:
                while True:
                    completed = conn.execute(text("SELECT count(*) FROM requests WHERE status = 'completed'")).scalar()
                    conn.commit()
                    if progress and done_bar is not None:
                        progress.update(done_bar, completed=(completed or 1) - 1)
                    if (completed or 0) - 1 >= requests:
                        break
                    # The count itself costs PostgreSQL time lethe's run pays for (3-9 ms at 30k-100k rows): polled
                    # less often the longer the run, never more than 1% of it late.
                    time.sleep(max(0.05, requests / 50_000))
            seconds = time.perf_counter() - start
            filer.join()
        with engine.connect() as conn:
            failed = conn.execute(text("SELECT count(*) FROM requests WHERE status <> 'completed'")).scalar()
            latencies = sorted(float(r[0]) for r in conn.execute(text(
                "SELECT extract(epoch FROM completed_at - received_at) FROM requests WHERE actor = 'cli' "
                "ORDER BY received_at OFFSET 1")))
            ledger_bytes = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
            rows = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                    for table in ("requests", "tasks", "completion_records", "audit_log", "certificates", "outbox")}
            # Dead row versions left by the run's updates (autovacuum may have reclaimed some meanwhile).
            dead = {name: int(n) for name, n in conn.execute(text(
                "SELECT relname, n_dead_tup FROM pg_stat_user_tables WHERE n_dead_tup > 0 ORDER BY relname"))}
            problems = lethe.ledger.verify()
    assert failed == 0, f"{failed} requests did not complete"
    return {
        "requests": requests, "tasks": requests * TARGETS, "seconds": seconds,
        "requests_per_second": requests / seconds,
        "completion_seconds_p50": statistics.median(latencies) if latencies else None,
        "completion_seconds_p99": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "ledger_mib": round((ledger_bytes or 0) / 2**20, 1), "ledger_rows": rows, "dead_tuples": dead,
        "ledger_verified": problems == [], "ledger_problems": problems[:3],
        "peak_mib": {k: round(v, 1) for k, v in memory.peaks.items()}, "cpu_seconds": memory.cpu_seconds(),
    }


def bench_orchestration(requests: int, workdir: Path, show_progress: bool = False,
                        url: str = BROKER, rounds: int = 1) -> dict[str, Any]:
    """Lethe over ``requests`` x 4 memory targets, against as many bare Celery no-op tasks (on the broker at
    ``url``, whose database is emptied first), ``rounds`` times, each round bare Celery then lethe. The ratio
    is the median round's: on this shared machine bare Celery's own rate moved by a third from one minute
    to the next (918 to 1,297 tasks/s), so one short round's ratio said as much about the minute as about
    lethe. The median round's runs are reported in full; every round's seconds are kept."""
    tasks = requests * TARGETS
    workdir.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    runs = []
    with Progress(*columns, disable=not show_progress) as progress:
        for _ in range(rounds):
            baseline = bare_celery(tasks, workdir, progress if show_progress else None, url)
            lethe = lethe_requests(requests, workdir, progress if show_progress else None, url)
            runs.append((lethe["seconds"] / baseline["seconds"], baseline, lethe))
    ratio, baseline, lethe = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]
    return {"requests": requests, "tasks": tasks, "celery_noop": baseline, "lethe": lethe, "ratio": ratio,
            "rounds": [{"celery_noop_seconds": round(b["seconds"], 2), "lethe_seconds": round(lt["seconds"], 2),
                        "ratio": round(r, 3)} for r, b, lt in runs],
            "goal": "<= 1.5"}


if __name__ == "__main__":
    import json
    import tempfile

    from orchestrator import logs

    logs.configure(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        result = bench_orchestration(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, Path(tmp), show_progress=True)
    print(json.dumps(result, indent=2))
