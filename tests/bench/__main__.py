"""`make bench`: lethe measured against baselines run in the same process tree, reported as ratios.

1. Orchestration overhead: N requests x 4 in-memory targets through Redis and the PostgreSQL ledger, against
   as many bare Celery no-op tasks (tests/bench/orchestration.py). Goal <= 1.2x.
2. S3 purge rate: one subject's versioned objects purged by the S3 target, against a raw boto3
   ListObjectVersions + DeleteObjects loop on the same moto server; S3 calls per 1,000 objects
   (tests/bench/s3.py): a normal task (count, purge, verify) and an approved one. Goals >= 0.9x,
   <= 2.1 calls (normal); and a 10-object request's fixed cost on a bucket of 18k other objects.
3. Flat memory: a worker process's peak RSS purging 10k vs 1M objects of one subject, on a stub S3 endpoint
   that synthesises its listing (tests/bench/memory.py). Goal <= 1.1x.
4. Bulk scale: the seed's case, 100k people erased at once (x 4 targets), end to end, against bare Celery
   for the same number of tasks; requests/s, p50/p99 completion, ledger size, every process's peak memory.
5. Event intake, Feast offline purge, LanceDB purge: against their raw engines.
6. Delta purge: 1,000 of 1M rows with vacuum and log cut, against a bare delete without vacuum
   (tests/bench/lake.py).
7. SQL purge: one subject's 100k rows on PostgreSQL in batches of their own transactions, against a bare
   DELETE in one statement (tests/bench/sql.py).
8. Scale-out: the orchestration workload with 1, 2 and 4 worker processes against bare Celery with as
   many; how much of Celery's speedup lethe keeps, and how often the audit chain's lock is waited on
   (tests/bench/scaleout.py).
9. The seed's withdrawal: ``lethe submit --dataset`` of 3M photos (stub S3) with their vectors (LanceDB),
   feature rows (Feast) and the models trained on them (MLflow), against a raw DeleteObjects loop on the
   same stub; peak worker memory, and a second run whose worker is SIGKILLed mid-purge and resumed without
   deleting any photo twice (tests/bench/seed.py). Goal >= 0.9x.
10. Resurrection watch: one window of 1,000 object versions of an S3 prefix target on moto, with 100k
   tombstones in the PostgreSQL ledger, against the raw ListObjectVersions call under it; the share of a core
   an hourly window (1% of 100k tombstones an hour) takes, and the price of one read-back per subject
   instead (tests/bench/watch.py).
11. Small-request latency: one request x 4 memory targets, submit to completed (``Lethe.wait``), 200 filed
   one after another, p50 and p99 against a bare Celery round trip of 4 no-op tasks (tests/bench/latency.py).
12. Qdrant purge (local mode): 1,000 of 1M points with the storage file vacuumed and the client reopened
   from disk, against a bare delete by filter (tests/bench/qdrant.py).

``--scale 0.1`` runs the bulk and the large-data figures at a tenth; ``--only`` picks figures. Results go to
``--out`` (default bench-out/): results.json and ratios.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import redis

from orchestrator import logs
from tests.bench import report, stores
from tests.bench.orchestration import BROKER, bench_orchestration
from tests.fixtures.services import temporary_database

FIGURES = ["orchestration", "latency", "scaleout", "s3", "memory", "bulk", "events", "feast", "lancedb", "qdrant",
           "delta", "sql", "seed", "watch"]


def mib(peaks: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:,.0f}" for name, value in peaks.items())


def seconds(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:,.1f}" for name, value in cpu.items())


def print_orchestration(name: str, o: dict[str, Any], goal: float) -> None:
    bare, lethe = o["celery_noop"], o["lethe"]
    print(f"{name}: {o['requests']:,} requests x 4 targets = {o['tasks']:,} tasks: bare Celery {bare['seconds']:.1f} s "
          f"({bare['tasks_per_second']:,.0f} tasks/s), lethe {lethe['seconds']:.1f} s "
          f"({lethe['requests_per_second']:,.0f} requests/s) -> {o['ratio']:.2f}x (goal <= {goal}x)")
    if len(o.get("rounds", [])) > 1:
        print(f"  the median of {len(o['rounds'])} rounds: "
              + ", ".join(f"{r['ratio']:.2f}x ({r['lethe_seconds']:.1f} s vs {r['celery_noop_seconds']:.1f} s)"
                          for r in o["rounds"]))
    print(f"  completion p50 {lethe['completion_seconds_p50']:.1f} s, p99 {lethe['completion_seconds_p99']:.1f} s; "
          f"ledger {lethe['ledger_mib']:,.0f} MiB ({lethe['ledger_rows']['audit_log']:,} audit entries), "
          f"verified: {lethe['ledger_verified']}")
    if lethe.get("dead_tuples"):
        print(f"  dead tuples at the end: {', '.join(f'{t} {n:,}' for t, n in lethe['dead_tuples'].items())}")
    print(f"  peak MiB, lethe: {mib(lethe['peak_mib'])}; bare Celery: {mib(bare['peak_mib'])}")
    print(f"  CPU s, lethe: {seconds(lethe['cpu_seconds'])}; bare Celery: {seconds(bare['cpu_seconds'])}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--scale", type=float, default=1.0, help="size of the bulk and large-data runs (0.1 = a tenth)")
    parser.add_argument("--requests", type=int, default=1000, help="requests of the orchestration figure")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the orchestration figure (median)")
    parser.add_argument("--latency-requests", type=int, default=200, help="requests of the latency figure")
    parser.add_argument("--bulk-requests", type=int, default=100_000, help="requests of the bulk run, before --scale")
    parser.add_argument("--s3-objects", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--only", choices=FIGURES, action="append")
    args = parser.parse_args()
    only = args.only or FIGURES
    scaled = lambda n: max(1, int(n * args.scale))  # noqa: E731
    logs.configure(level="WARNING")
    results: dict[str, Any] = {"scale": args.scale, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "orchestration" in only:
            results["orchestration"] = o = bench_orchestration(args.requests, work / "orchestration",
                                                               rounds=args.rounds)
            print_orchestration("orchestration", o, goal=1.2)
        if "latency" in only:
            from tests.bench.latency import bench_latency

            results["latency"] = lt = bench_latency(args.latency_requests, work / "latency")
            bare, lethe = lt["celery_noop"], lt["lethe"]
            print(f"latency: {lt['requests']} requests x 4 targets one after another, submit to completed: lethe p50 "
                  f"{lethe['p50_ms']:.0f} ms, p99 {lethe['p99_ms']:.0f} ms; bare Celery (4 tasks) p50 "
                  f"{bare['p50_ms']:.1f} ms, p99 {bare['p99_ms']:.1f} ms -> {lt['ratio_p50']:.1f}x p50, "
                  f"{lt['ratio_p99']:.1f}x p99 (the ledger's own received-to-completed: p50 "
                  f"{lethe['ledger']['p50_ms']:.0f} ms, p99 {lethe['ledger']['p99_ms']:.0f} ms)")
        if "scaleout" in only:
            from tests.bench.scaleout import bench_scaleout, describe

            results["scaleout"] = so = bench_scaleout(args.requests, work / "scaleout")
            print("\n".join(describe(so)))
        if "s3" in only:
            from tests.bench.s3 import bench_s3, summary

            results["s3_purge"] = s3 = bench_s3(args.s3_objects)
            print("\n".join(summary(s3)))
        if "memory" in only:
            from tests.bench.memory import bench_flat_memory

            results["flat_memory"] = m = bench_flat_memory(work / "memory", 10_000, scaled(1_000_000))
            print(f"flat memory: worker peak RSS purging {m['small']['objects']:,} objects "
                  f"{m['small']['peak_rss_kib'] / 1024:.1f} MiB, {m['large']['objects']:,} objects "
                  f"{m['large']['peak_rss_kib'] / 1024:.1f} MiB -> {m['ratio']:.3f}x (goal <= 1.1x); {m['note']}")
        if "bulk" in only:
            results["bulk"] = b = bench_orchestration(scaled(args.bulk_requests), work / "bulk", show_progress=True)
            print_orchestration("bulk scale", b, goal=1.5)
        if "events" in only:
            redis.Redis.from_url(BROKER).flushdb()
            with temporary_database("lethe_bench") as db:
                results["events"] = e = stores.bench_intake(BROKER, db, work, args.events)
            print(f"event intake: {e['events']:,} signed events filed as requests at {e['events_per_second']:,.0f}/s "
                  f"= {e['ratio']:.1f}x the time of a raw kombu publish+consume of the same bodies")
        if "feast" in only:
            results["feast_offline"] = f = stores.bench_feast_offline(work / "feast", scaled(1_000_000), 10, rounds=5)
            print(f"feast offline purge: {f['rows']:,} rows in {f['files']} files: {f['rows_per_second']:,.0f} rows/s, "
                  f"rate {f['rate_ratio']:.2f}x of a whole-file pyarrow rewrite (goal >= 1.0x; median of {f['rounds']} "
                  f"rounds), peak memory "
                  f"{f['lethe']['peak_mib']:.0f} MiB = {f['peak_memory_ratio']:.2f}x of it")
        if "lancedb" in only:
            from tests.bench.lancedb_purge import bench_lancedb

            results["lancedb"] = v = bench_lancedb(work / "lance", scaled(1_000_000))
            lp, sp = v["lethe_purge"], v["spread"]
            print(f"lancedb purge: {v['erased']:,} of {v['rows']:,} vectors in one of {v['fragments']} fragments: "
                  f"{lp['seconds']:.3f} s with compaction of {lp['fragments_rewritten']} fragment(s), cleanup and "
                  f"byte scan (level {lp['level']}) vs a bare delete {v['raw_delete']['seconds']:.3f} s -> "
                  f"{v['compaction_cost_ratio']:.1f}x (goal <= 10x; medians of {v['rounds']} rounds; verify "
                  f"{lp['verify_seconds']:.3f} s)")
            print(f"  the same vectors spread over every fragment: {sp['lethe_purge']['fragments_rewritten']}/"
                  f"{sp['lethe_purge']['fragments_total']} rewritten, lethe {sp['lethe_purge']['seconds']:.3f} s vs "
                  f"bare {sp['raw_delete']['seconds']:.3f} s -> {sp['compaction_cost_ratio']:.1f}x")
        if "qdrant" in only:
            from tests.bench.qdrant import bench_qdrant

            results["qdrant"] = qd = bench_qdrant(work / "qdrant", scaled(1_000_000))
            qp = qd["lethe_purge"]
            print(f"qdrant purge (local mode): {qd['erased']:,} of {qd['points']:,} points: "
                  f"lethe {qp['seconds']:.2f} s "
                  f"(read, delete, VACUUM, reopen; level {qp['level']}) vs a bare delete by filter "
                  f"{qd['bare_delete']['seconds']:.2f} s -> {qd['ratio']:.2f}x (medians of {qd['rounds']} rounds; "
                  f"verify {qp['verify_seconds']:.2f} s)")
        if "delta" in only:
            from tests.bench.lake import bench_delta

            results["delta"] = d = bench_delta(work / "delta", scaled(1_000_000))
            lp = d["lethe_purge"]
            print(f"delta purge: {d['subject_rows']:,} of {d['rows']:,} rows: lethe {lp['seconds']:.2f} s (delete, "
                  f"zero-retention vacuum, log cut; {lp['files_rewritten']}/{lp['files_total']} files rewritten, level "
                  f"{lp['level']}) vs a bare delete without vacuum {d['bare_delete']['seconds']:.2f} s -> "
                  f"{d['ratio']:.2f}x ({d['with_verify_ratio']:.2f}x with verify): the price of erasing history")
            sp = d["spread"]
            print(f"  the same rows spread over every file: {sp['lethe_purge']['files_rewritten']}/"
                  f"{sp['lethe_purge']['files_total']} files rewritten, lethe {sp['lethe_purge']['seconds']:.2f} s vs "
                  f"bare {sp['bare_delete']['seconds']:.2f} s -> {sp['ratio']:.2f}x")
        if "sql" in only:
            from tests.bench.sql import bench_sql

            results["sql"] = q = bench_sql(scaled(100_000))
            lp = q["lethe_purge"]
            print(f"sql purge: {q['rows']:,} rows of one subject in a {q['table_rows']:,}-row PostgreSQL table: lethe "
                  f"{lp['seconds']:.2f} s in {q['batches']} batches of their own transactions (level {lp['level']}) vs "
                  f"a bare DELETE in one statement {q['bare_delete']['seconds']:.2f} s -> {q['ratio']:.2f}x "
                  f"({q['with_verify_ratio']:.2f}x with verify; medians of {q['rounds']} rounds: lethe "
                  f"{', '.join(f'{t:.2f}' for t in q['lethe_seconds_all'])} s, bare "
                  f"{', '.join(f'{t:.2f}' for t in q['bare_seconds_all'])} s)")
        if "seed" in only:
            from tests.bench.seed import bench_seed
            from tests.bench.seed import describe as describe_seed

            results["seed"] = bench_seed(work / "seed", args.scale)
            print(describe_seed(results["seed"]))
        if "watch" in only:
            from tests.bench.watch import bench_watch

            results["watch"] = w = bench_watch(tombstones=scaled(100_000))
            print(f"resurrection watch: a window of {w['identifiers']:,} identifiers (S3 on moto, {w['tombstones']:,} "
                  f"tombstones on PostgreSQL) {w['window_seconds']:.2f} s in {w['s3_calls_per_window']:.0f} S3 call vs "
                  f"the raw listing {w['raw_list_seconds']:.2f} s -> {w['ratio']:.2f}x; hourly, "
                  f"{w['duty_per_hour']:.3%} of a core; one read-back per subject instead: "
                  f"{w['per_subject_window_seconds']:,.0f} s "
                  f"({w['per_subject_ratio']:,.0f}x)")
    for path in report.write(results, args.out):
        print(f"written: {path}")


if __name__ == "__main__":
    main()
