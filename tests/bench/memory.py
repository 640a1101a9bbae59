"""Flat memory (issue #10, figure 3): the S3 target's peak RSS purging one subject of 10k vs 1M objects.

Each size runs in a fresh child process (``python -m tests.bench.memory --child ...``) that builds
``S3Target`` against a stub S3 endpoint (``tests.bench.stub_s3``: a synthesised versioned bucket, since
moto's server cannot hold a million objects) and runs what a worker runs for one subject: the blast-radius
``count``, ``purge`` and ``verify``. The child reports its own peak RSS (``VmHWM``); the stub runs in
this (the parent) process, so its memory is not counted. Goal: large / small peak <= 1.1.

``.venv/bin/python -m tests.bench.memory [--small N] [--large N]`` prints one line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.stub_s3 import StubS3

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "bench-memory"
SUBJECT = "42"
BYSTANDER = "7"
BYSTANDER_OBJECTS = 1000
GOAL = 1.1


def rss_kib(field: str = "VmRSS") -> int:
    """Current resident set size (KiB), or with ``VmHWM`` its peak, from /proc; 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(endpoint: str, bucket: str, user_id: str, trace: bool = False) -> dict[str, Any]:
    """What a worker does for one subject on one S3 target; returns the figures of this process."""
    from orchestrator.identifiers import Subject
    from orchestrator.testing import FAKE_AWS_ENV
    from workers.targets.s3 import S3Config, S3Target

    os.environ.update(FAKE_AWS_ENV)
    target = S3Target(S3Config(name="bench-memory", kind="s3", endpoint_url=endpoint, bucket=bucket,
                               prefix="users/{user_id}/"))
    subject = Subject.parse({"user_id": user_id}, {"user_id": None})
    calls = 0

    def count_call(**_: Any) -> None:
        nonlocal calls
        calls += 1

    target.client.meta.events.register("before-call.s3", count_call)
    # Warm up: one listing of nothing loads the service model, parsers and a pooled connection, so the
    # baseline below holds everything a purge of any size needs before its first page.
    target.client.list_object_versions(Bucket=bucket, Prefix="warm-up/", MaxKeys=1)
    calls = 0
    baseline_kib = rss_kib()
    if trace:
        import tracemalloc

        tracemalloc.start(25)
    start = time.perf_counter()
    blast = target.count(subject)
    count_calls, count_seconds = calls, time.perf_counter() - start
    start = time.perf_counter()
    deleted = target.purge(subject, lambda done=None: None)
    purge_calls, purge_seconds = calls - count_calls, time.perf_counter() - start
    start = time.perf_counter()
    residue = target.verify(subject)
    verify_calls, verify_seconds = calls - count_calls - purge_calls, time.perf_counter() - start
    figures: dict[str, Any] = {
        "blast_radius": blast, "deleted": deleted, "residue": residue,
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent at fork, so a child of a
        # 4 GiB `make bench` process reported 4 GiB whatever it did itself.
        "peak_rss_kib": rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "baseline_rss_kib": baseline_kib, "end_rss_kib": rss_kib(),
        "count_seconds": count_seconds, "purge_seconds": purge_seconds, "verify_seconds": verify_seconds,
        "seconds": count_seconds + purge_seconds + verify_seconds,
        "calls": {"count": count_calls, "purge": purge_calls, "verify": verify_calls},
    }
    if trace:
        import tracemalloc

        current, peak = tracemalloc.get_traced_memory()
        top = tracemalloc.take_snapshot().statistics("lineno")[:10]
        figures["tracemalloc"] = {"current_kib": current // 1024, "peak_kib": peak // 1024,
                                  "top": [str(stat) for stat in top]}
        tracemalloc.stop()
    return figures


def run_size(objects: int, workdir: Path, trace: bool = False) -> dict[str, Any]:
    """One subject of ``objects`` versions (and a bystander) on a fresh stub; the purge in a fresh child."""
    stub = StubS3({SUBJECT: objects, BYSTANDER: BYSTANDER_OBJECTS}, bucket=BUCKET)
    with stub as endpoint:
        args = [sys.executable, "-m", "tests.bench.memory", "--child", "--endpoint", endpoint,
                "--bucket", BUCKET, "--user", SUBJECT]
        if trace:
            args.append("--trace")
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        log = workdir / f"memory-child-{objects}.log"
        with open(log, "wb") as err:
            proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                                  stdout=subprocess.PIPE, stderr=err, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for {objects} objects exited {proc.returncode}: "
                               f"{log.read_text()[-2000:]}")
        figures: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        # Read back from the stub itself, independent of the client under test.
        figures.update(subject_left=stub.live(SUBJECT), bystander_left=stub.live(BYSTANDER),
                       stub_requests=dict(stub.requests))
    ok = (figures["blast_radius"] == objects and figures["deleted"] == objects and figures["residue"] == 0
          and figures["subject_left"] == 0 and figures["bystander_left"] == BYSTANDER_OBJECTS)
    if not ok:
        raise AssertionError(f"purge of {objects} objects was not exact: {figures}")
    return {"objects": objects, **figures, "peak_rss_mib": figures["peak_rss_kib"] / 1024}


def bench_flat_memory(workdir: Path, small: int = 10_000, large: int = 1_000_000,
                      trace: bool = False) -> dict[str, Any]:
    """Peak RSS of a worker process purging one subject of ``small`` vs ``large`` objects from S3."""
    workdir.mkdir(parents=True, exist_ok=True)
    lo = run_size(small, workdir, trace)
    hi = run_size(large, workdir, trace)
    calls = hi["calls"]
    return {
        "small": lo, "large": hi,
        "ratio": hi["peak_rss_kib"] / lo["peak_rss_kib"],
        "goal": f"<= {GOAL}",
        # As in the S3 purge-rate figure: the purge's calls (List + Delete) per 1,000 objects; "all" adds
        # the blast-radius count before it and the verify after it.
        "calls_per_1000": calls["purge"] * 1000 / large,
        "all_calls_per_1000": sum(calls.values()) * 1000 / large,
        "note": "stub S3 endpoint (synthesised versioned listing over HTTP, tests/bench/stub_s3.py), not moto; "
                "peak RSS (VmHWM) of a fresh child running S3Target count + purge + verify for one subject "
                f"with {BYSTANDER_OBJECTS} bystander objects beside it; the stub runs in the parent",
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.memory")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the children (slow)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", default=BUCKET, help=argparse.SUPPRESS)
    parser.add_argument("--user", default=SUBJECT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.endpoint, args.bucket, args.user, args.trace)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        m = bench_flat_memory(Path(tmp), args.small, args.large, args.trace)
    if args.json:
        args.json.write_text(json.dumps(m, indent=2))
    lo, hi = m["small"], m["large"]
    print(f"flat memory: S3 purge of {lo['objects']:,} vs {hi['objects']:,} versions: peak RSS "
          f"{lo['peak_rss_mib']:.1f} MiB vs {hi['peak_rss_mib']:.1f} MiB -> {m['ratio']:.3f}x (goal <= {GOAL}x), "
          f"{lo['seconds']:.1f} s vs {hi['seconds']:.1f} s, {m['calls_per_1000']:.2f} S3 calls per 1,000 objects "
          f"(stub S3 endpoint)")


if __name__ == "__main__":
    main()
