"""Benchmarks of the vector and feature targets against their engines' raw calls, each run in a fresh
process so peak memory (VmHWM) belongs to that run alone."""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any

SUBJECT = 42
SUBJECTS = 100_000


def _in_child(fn: Any, *args: Any) -> dict[str, Any]:
    """Run fn(*args) -> seconds in a new process; return its seconds and peak RSS (MiB)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(_measure, (fn, *args))
    return result


def _measure(fn: Any, *args: Any) -> dict[str, Any]:
    seconds = fn(*args)
    return {"seconds": seconds, "peak_mib": peak_rss_kib() / 1024}


def peak_rss_kib() -> int:
    """This process's peak RSS (KiB): VmHWM, since Linux carries ru_maxrss over from the parent at fork."""
    from tests.bench.memory import rss_kib

    return rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- Feast offline store: rewrite Parquet files without one subject's rows -----------------------------------
def make_parquet(folder: Path, rows: int, files: int) -> list[Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    per_file = rows // files
    for f in range(files):
        ids = (np.arange(per_file, dtype=np.int64) + f * per_file) % SUBJECTS
        table = pa.table({"user_id": ids, "score": np.random.default_rng(f).random(per_file),
                          "logins": np.arange(per_file, dtype=np.int64)})
        path = folder / f"part-{f}.parquet"
        pq.write_table(table, path, row_group_size=50_000)
        paths.append(path)
    return paths


def raw_parquet_rewrite(paths: list[Path]) -> float:
    """Baseline: pyarrow reads each file whole, filters, writes it back."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    start = time.perf_counter()
    for path in paths:
        table = pq.read_table(path)
        pq.write_table(table.filter(pc.not_equal(table.column("user_id"), SUBJECT)), path)
    return time.perf_counter() - start


def lethe_parquet_rewrite(paths: list[Path]) -> float:
    # What a worker has loaded before its first purge is loaded before the clock starts, as the baseline's
    # pyarrow is: the first figures timed ~0.1 s of imports inside a ~0.3 s purge.
    import pyarrow.compute
    import pyarrow.fs
    import pyarrow.parquet  # noqa: F401

    from workers.targets import parquet_splice  # noqa: F401
    from workers.targets.parquet_files import local_fs, rewrite_without

    start = time.perf_counter()
    for path in paths:
        rewrite_without(local_fs(), str(path), {"user_id": SUBJECT}, lambda done=None: None)
    return time.perf_counter() - start


def bench_feast_offline(workdir: Path, rows: int, files: int, rounds: int = 3) -> dict[str, Any]:
    """Each round rewrites fresh copies of the same files, baseline and lethe in turn; medians of the rounds
    (one run each was at the mercy of whatever else the machine ran)."""
    import statistics

    raws, lethes = [], []
    for r in range(rounds):
        raws.append(_in_child(raw_parquet_rewrite, make_parquet(workdir / f"raw-{r}", rows, files)))
        lethes.append(_in_child(lethe_parquet_rewrite, make_parquet(workdir / f"lethe-{r}", rows, files)))
    raw_seconds = statistics.median(run["seconds"] for run in raws)
    lethe_seconds = statistics.median(run["seconds"] for run in lethes)
    raw = {"seconds": raw_seconds, "peak_mib": max(run["peak_mib"] for run in raws)}
    lethe = {"seconds": lethe_seconds, "peak_mib": max(run["peak_mib"] for run in lethes)}
    return {"rows": rows, "files": files, "raw": raw, "lethe": lethe, "rounds": rounds,
            "raw_seconds_all": [run["seconds"] for run in raws],
            "lethe_seconds_all": [run["seconds"] for run in lethes],
            "rows_per_second": rows / lethe_seconds, "rate_ratio": raw_seconds / lethe_seconds,
            "peak_memory_ratio": lethe["peak_mib"] / raw["peak_mib"],
            "note": "every file holds the subject, in one of its two row groups: lethe splices the other "
                    "row group's bytes and re-encodes one; the baseline re-encodes both (and does not fsync)"}


# -- event intake: signed events accepted per second --------------------------------------------------------
def raw_kombu_roundtrip(broker: str, bodies: list[bytes]) -> float:
    """Baseline: publish the same bodies to a queue and consume them back with kombu."""
    from kombu import Connection

    with Connection(broker) as conn:
        queue = conn.SimpleBuffer("bench.raw-events")
        queue.clear()
        start = time.perf_counter()
        for body in bodies:
            queue.put(body)
        for _ in bodies:
            queue.get(timeout=30).ack()
        elapsed = time.perf_counter() - start
        queue.close()
    return elapsed


def bench_intake(broker: str, database_url: str, workdir: Path, events: int) -> dict[str, Any]:
    import threading

    from kombu import Connection
    from sqlalchemy import text

    from orchestrator.certificates import create_private_key
    from orchestrator.config import Settings
    from orchestrator.events import ERASURE_REQUESTED, declare, make_event, publish
    from orchestrator.intake import Intake
    from orchestrator.ledger.models import Base  # noqa: F401 - tables for the count below
    from orchestrator.service import Lethe

    key = b"bench-event-key"
    data_map = workdir / "events-map.yaml"
    data_map.write_text('version: 1\nidentifiers: [user_id]\ntargets:\n'
                        '  - {name: t, kind: memory, store: s, match: {owner: "{user_id}"}}\n')
    signing = workdir / "events-signing.pem"
    create_private_key(signing)
    lethe = Lethe(Settings(broker_url=broker, database_url=database_url, subject_key="be" * 32,
                           signing_key=signing, data_map=data_map, event_key=key.decode()))
    lethe.migrate()
    signed = [make_event(ERASURE_REQUESTED, {"subject": {"user_id": str(i)}}, source="bench", key=key)
              for i in range(events)]
    raw = raw_kombu_roundtrip(broker, [json_bytes(e) for e in signed])
    with Connection(broker) as conn:
        declare(conn)
        intake = Intake(lethe, conn, key)
        start = time.perf_counter()
        for event in signed:
            publish(conn, event)
        thread = threading.Thread(target=intake.run, daemon=True)
        thread.start()
        while True:
            with lethe.ledger.engine.connect() as c:
                if (c.execute(text("SELECT count(*) FROM requests")).scalar() or 0) >= events:
                    break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        intake.should_stop = True
        thread.join(10)
    lethe.ledger.engine.dispose()
    return {"events": events, "raw_seconds": raw, "lethe_seconds": elapsed, "events_per_second": events / elapsed,
            "ratio": elapsed / raw}


def json_bytes(event: dict[str, Any]) -> bytes:
    from orchestrator.certificates import canonical_json

    return canonical_json(event)
