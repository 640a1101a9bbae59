"""`make bench`: lethe measured against baselines run in the same process tree, reported as ratios.

1. Orchestration overhead: N requests x 4 in-memory targets through Redis and the PostgreSQL ledger with a
   `lethe worker -c 2` process, against the same number of bare Celery no-op tasks (same broker, same
   worker settings, `celery worker -c 2`). Goal: <= 1.5x (not met yet: see the printed figure).
2. S3 purge rate: one subject's versioned objects purged by the S3 target, against a raw boto3 loop of
   ListObjectVersions + DeleteObjects(1,000) over an identical bucket on the same moto server; plus the
   number of S3 calls per 1,000 objects.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from orchestrator import logs
from orchestrator.certificates import create_private_key
from orchestrator.config import Settings
from orchestrator.identifiers import Subject
from orchestrator.service import Lethe
from orchestrator.testing import FAKE_AWS_ENV, make_bucket, put_objects, s3_server
from tests.bench import stores
from tests.fixtures.services import temporary_database
from workers.targets.s3 import S3Config, S3Target, s3_client

BIN = Path(sys.executable).parent
REDIS = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
KEY = "be" * 32


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path):  # type: ignore[no-untyped-def]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()




def bench_baseline(tasks: int, workdir: Path) -> float:
    r = redis.Redis.from_url(REDIS)
    r.flushdb()
    env = {**os.environ, "BENCH_BROKER": REDIS, "PYTHONPATH": str(Path.cwd())}
    with process([str(BIN / "celery"), "-A", "tests.bench.noop", "worker", "-c", "2", "--loglevel", "WARNING",
                  "--without-mingle", "--without-gossip"], env, workdir / "noop.log"):
        from tests.bench.noop import app

        app.send_task("bench.noop", args=["warm-up"])
        while int(r.get("bench:done") or 0) < 1:
            time.sleep(0.05)
        start = time.perf_counter()
        for i in range(tasks):
            app.send_task("bench.noop", args=[str(i)])
        while int(r.get("bench:done") or 0) < tasks + 1:
            time.sleep(0.01)
        return time.perf_counter() - start


def bench_lethe(requests: int, workdir: Path) -> float:
    redis.Redis.from_url(REDIS).flushdb()
    targets = "\n".join(f'  - {{name: t{i}, kind: memory, store: s{i}, match: {{owner: "{{user_id}}"}}}}'
                        for i in range(4))
    data_map = workdir / "bench-map.yaml"
    data_map.write_text(f"version: 1\nidentifiers: [user_id]\ntargets:\n{targets}\n")
    signing = workdir / "signing.pem"
    create_private_key(signing)
    with temporary_database("lethe_bench") as db:
        env = {**os.environ, "LETHE_BROKER_URL": REDIS, "LETHE_DATABASE_URL": db, "LETHE_SUBJECT_KEY": KEY,
               "LETHE_SIGNING_KEY": str(signing), "LETHE_DATA_MAP": str(data_map), "LETHE_LOG_LEVEL": "WARNING"}
        lethe = Lethe(Settings(broker_url=REDIS, database_url=db, subject_key=KEY, signing_key=signing,
                               data_map=data_map))
        lethe.ledger  # noqa: B018 - migrate before the worker starts
        with process([str(BIN / "lethe"), "worker", "-c", "2", "--loglevel", "WARNING"], env,
                     workdir / "lethe-worker.log"):
            warm, _ = lethe.submit({"user_id": "warm-up"})
            lethe.wait(warm, timeout=60, interval=0.05)
            start = time.perf_counter()
            ids = [lethe.submit({"user_id": f"u{i}"})[0] for i in range(requests)]
            for rid in ids:
                status = lethe.wait(rid, timeout=600, interval=0.05)
                assert status["status"] == "completed", status
            elapsed = time.perf_counter() - start
        lethe.ledger.engine.dispose()
        return elapsed


def bench_s3(objects: int) -> dict[str, Any]:
    os.environ.update(FAKE_AWS_ENV)
    with s3_server() as endpoint:
        client = s3_client(endpoint, None)
        keys = [f"users/42/obj-{i:06d}" for i in range(objects)]
        for bucket in ("bench-raw", "bench-lethe"):
            make_bucket(endpoint, bucket)
            put_objects(endpoint, bucket, keys, threads=16)

        start = time.perf_counter()
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket="bench-raw", Prefix="users/42/"):
            entries = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                       for v in (*page.get("Versions", ()), *page.get("DeleteMarkers", ()))]
            if entries:
                client.delete_objects(Bucket="bench-raw", Delete={"Objects": entries, "Quiet": True})
        raw = time.perf_counter() - start

        calls = 0

        def count(**_: Any) -> None:
            nonlocal calls
            calls += 1

        client.meta.events.register("before-call.s3", count)
        target = S3Target(S3Config(name="bench", kind="s3", endpoint_url=endpoint, bucket="bench-lethe",
                                   prefix="users/{user_id}/"))
        subject = Subject({"user_id": "42"})
        start = time.perf_counter()
        deleted = target.purge(subject, lambda done=None: None)
        purge_seconds = time.perf_counter() - start
        purge_calls = calls
        residue = target.verify(subject)
        assert deleted == objects and residue == 0, (deleted, residue)
        return {"objects": objects, "raw_seconds": raw, "lethe_seconds": purge_seconds,
                "rate_ratio": raw / purge_seconds, "calls_per_1000": purge_calls * 1000 / objects}


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--s3-objects", type=int, default=3000)
    parser.add_argument("--offline-rows", type=int, default=1_000_000)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--only", choices=["orchestration", "s3", "feast", "lancedb", "events"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["orchestration", "s3", "feast", "lancedb", "events"])
    args.out.mkdir(parents=True, exist_ok=True)
    logs.configure(level="WARNING")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "orchestration" in only:
            tasks = args.requests * 4
            baseline = bench_baseline(tasks, work)
            lethe_seconds = bench_lethe(args.requests, work)
            results["orchestration"] = {"requests": args.requests, "tasks": tasks, "celery_noop_seconds": baseline,
                                        "lethe_seconds": lethe_seconds, "overhead_ratio": lethe_seconds / baseline,
                                        "goal": "<= 1.5"}
            print(f"orchestration: {tasks} tasks: bare Celery {baseline:.2f} s, lethe {lethe_seconds:.2f} s "
                  f"-> {lethe_seconds / baseline:.2f}x (goal <= 1.5x)")
        if "s3" in only:
            s3 = bench_s3(args.s3_objects)
            results["s3_purge"] = {**s3, "goal": "rate_ratio >= 0.9, calls_per_1000 <= 3"}
            print(f"s3 purge: {s3['objects']} versions: raw boto3 {s3['raw_seconds']:.2f} s, lethe "
                  f"{s3['lethe_seconds']:.2f} s -> rate {s3['rate_ratio']:.2f}x of raw (goal >= 0.9x), "
                  f"{s3['calls_per_1000']:.1f} S3 calls per 1,000 objects (goal <= 3)")
        if "feast" in only:
            f = results["feast_offline"] = stores.bench_feast_offline(work / "feast", args.offline_rows, 10)
            print(f"feast offline purge: {f['rows']:,} rows in {f['files']} files: {f['rows_per_second']:,.0f} rows/s, "
                  f"rate {f['rate_ratio']:.2f}x of a whole-file pyarrow rewrite, peak memory "
                  f"{f['lethe']['peak_mib']:.0f} MiB = {f['peak_memory_ratio']:.2f}x of it")
        if "lancedb" in only:
            v = results["lancedb"] = stores.bench_lancedb(work / "lance", args.vectors)
            print(f"lancedb purge: {v['erased']:,} of {v['rows']:,} vectors: {v['vectors_per_second']:,.0f} vectors/s "
                  f"with compaction and cleanup = {v['compaction_cost_ratio']:.1f}x a bare delete "
                  f"({v['lethe_purge']['seconds']:.2f} s vs {v['raw_delete']['seconds']:.2f} s)")
        if "events" in only:
            redis.Redis.from_url(REDIS).flushdb()
            with temporary_database("lethe_bench") as db:
                e = results["events"] = stores.bench_intake(REDIS, db, work, args.events)
            print(f"event intake: {e['events']:,} signed events filed as requests at {e['events_per_second']:,.0f}/s "
                  f"= {e['ratio']:.1f}x the time of a raw kombu publish+consume of the same bodies")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"written: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
