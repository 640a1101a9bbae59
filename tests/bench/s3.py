"""S3 purge rate: the S3 target against a raw boto3 loop, on moto's S3 server over HTTP.

``python -m tests.bench.s3 --objects 3000`` prints the figures; ``make bench`` imports ``bench_s3``.

One subject's ``objects`` versions (one per key, under ``users/42/``) are purged by the raw loop and by
``S3Target.purge``, each on its own freshly seeded, identical bucket, ``rounds`` times in a rotating order;
the medians are compared. Both use the same boto3 client (lethe's, same config); a third run of the raw
loop on a stock boto3 client shows what lethe's client settings save. Wall-clock seconds give the rate
ratio; ``rate_ratio_cpu`` compares the process's CPU seconds (client and moto's threads), steadier on a
busy machine.

The raw loop is ListObjectVersions pages + one DeleteObjects per page (up to 1,000 keys), with no checks:
the lower bound on the work. It deletes a page once the next page has been listed: a loop that deletes a
page and then asks for the next one continues from a version it deleted, which moto answers with an empty
page (it leaves everything after the first page behind, and so looks three times faster than it is).
Both runs must leave no residue, or the bench fails.

Seeding goes straight into moto's backend (the server runs in this process): puts over HTTP run at
~160/s, which would make a 10,000-object bench take minutes per bucket. Only the timed runs use HTTP.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from orchestrator.identifiers import Subject
from orchestrator.testing import FAKE_AWS_ENV, make_bucket, s3_server
from workers.targets.s3 import S3Config, S3Target, s3_client

PREFIX = "users/42/"
NOTE = (
    "Measured on moto's S3 server, whose ListObjectVersions deep-copies and scans the whole bucket on "
    "every call: seconds here do not carry over to AWS. Per object and per DeleteObjects call they do: "
    "on real S3 a purge is bound by DeleteObjects at 1,000 keys per call and ~3,500 DELETE/s per "
    "prefix, i.e. ~3.5 DeleteObjects calls/s per prefix; calls_per_1000 (lethe and raw) is what projects."
)


class Run(NamedTuple):
    seconds: float
    cpu_seconds: float
    requests: dict[str, int]


def _seed(bucket: str, objects: int) -> None:
    """``objects`` versions, one per key, written by moto's backend directly (identical to HTTP puts)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for i in range(objects):
        backend.put_object(bucket, f"{PREFIX}obj-{i:06d}", f"v{i}".encode())


def _residue(client: Any, bucket: str) -> int:
    listed = client.list_object_versions(Bucket=bucket, Prefix=PREFIX)
    return len(listed.get("Versions", ())) + len(listed.get("DeleteMarkers", ()))


def raw_purge(client: Any, bucket: str) -> int:
    """The baseline: list pages, delete each page (one DeleteObjects) once the next page is listed."""
    deleted = 0
    previous: list[dict[str, str]] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=PREFIX):
        if previous:
            client.delete_objects(Bucket=bucket, Delete={"Objects": previous, "Quiet": True})
            deleted += len(previous)
        previous = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in (*page.get("Versions", ()), *page.get("DeleteMarkers", ()))]
    if previous:
        client.delete_objects(Bucket=bucket, Delete={"Objects": previous, "Quiet": True})
        deleted += len(previous)
    return deleted


def bench_s3(objects: int, rounds: int = 5) -> dict[str, Any]:
    """Medians of ``rounds`` raw and lethe purges of ``objects`` versions each, and their S3 requests."""
    import boto3

    os.environ.update(FAKE_AWS_ENV)
    with s3_server() as endpoint:
        client = s3_client(endpoint, None)
        # boto3's defaults (its own session, dateutil timestamps): what the shared client saves, for the record.
        stock = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
        sent: Counter[str] = Counter()

        def on_send(event_name: str, **_: Any) -> None:  # every HTTP request, retries included
            sent[event_name.rsplit(".", 1)[-1]] += 1

        for c in (client, stock):
            c.meta.events.register("before-send.s3", on_send)
        subject = Subject({"user_id": "42"})

        def target(bucket: str) -> S3Target:
            return S3Target(S3Config(name="bench", kind="s3", endpoint_url=endpoint, bucket=bucket,
                                     prefix="users/{user_id}/"))

        purges: dict[str, Callable[[str], int]] = {
            "raw": lambda bucket: raw_purge(client, bucket),
            "lethe": lambda bucket: target(bucket).purge(subject, lambda done=None: None),
            "raw_stock_client": lambda bucket: raw_purge(stock, bucket),
        }
        runs: dict[str, list[Run]] = {kind: [] for kind in (*purges, "count")}

        def run(kind: str, bucket: str, work: Callable[[str], int]) -> None:
            gc.collect()
            sent.clear()
            wall, cpu = time.perf_counter(), time.process_time()  # CPU: client and moto, one process
            done = work(bucket)
            runs[kind].append(Run(time.perf_counter() - wall, time.process_time() - cpu, dict(sent)))
            assert done == objects, (kind, done)

        for n in range(rounds):
            kinds = list(purges)
            kinds = kinds[n % len(kinds):] + kinds[:n % len(kinds)]  # rotate: none always runs first
            for kind in kinds:
                bucket = f"bench-{n}-{kind.replace('_', '-')}"
                make_bucket(endpoint, bucket)
                _seed(bucket, objects)
                run(kind, bucket, purges[kind])
                assert _residue(client, bucket) == 0, f"{kind} left residue"
                client.delete_bucket(Bucket=bucket)  # empty now: moto's memory stays flat across rounds

        # The blast-radius count the worker runs before an unapproved purge: once, on its own.
        make_bucket(endpoint, "bench-count")
        _seed("bench-count", objects)
        run("count", "bench-count", lambda bucket: target(bucket).count(subject))

    def median(kind: str, field: str = "seconds") -> float:
        return statistics.median(getattr(r, field) for r in runs[kind])

    def per_1000(kind: str, operation: str | None = None) -> float:
        requests = statistics.median(sum(n for op, n in r.requests.items() if operation in (None, op))
                                     for r in runs[kind])
        return requests * 1000 / objects

    raw_seconds, lethe_seconds = median("raw"), median("lethe")
    return {
        "objects": objects,
        "rounds": rounds,
        "raw_seconds": raw_seconds,
        "lethe_seconds": lethe_seconds,
        "rate_ratio": raw_seconds / lethe_seconds,
        "rate_ratio_cpu": median("raw", "cpu_seconds") / median("lethe", "cpu_seconds"),
        "calls_per_1000": per_1000("lethe"),
        "raw_calls_per_1000": per_1000("raw"),
        "deletes_per_1000": per_1000("lethe", "DeleteObjects"),
        "lethe_requests": runs["lethe"][-1].requests,
        "raw_requests": runs["raw"][-1].requests,
        "lethe_objects_per_second": objects / lethe_seconds,
        "raw_objects_per_second": objects / raw_seconds,
        "raw_stock_client_seconds": median("raw_stock_client"),
        "count_seconds": median("count"),
        "count_calls_per_1000": per_1000("count"),
        "seconds_all": {kind: [round(r.seconds, 3) for r in runs[kind]] for kind in runs},
        "note": NOTE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.s3", description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    s3 = bench_s3(args.objects, args.rounds)
    if args.json:
        print(json.dumps(s3, indent=2))
        return
    print(f"s3 purge: {s3['objects']} versions, median of {s3['rounds']}: raw boto3 {s3['raw_seconds']:.2f} s, "
          f"lethe {s3['lethe_seconds']:.2f} s -> rate {s3['rate_ratio']:.2f}x of raw (goal >= 0.9x); "
          f"S3 calls per 1,000 objects: lethe {s3['calls_per_1000']:.2f} (goal <= 3), raw "
          f"{s3['raw_calls_per_1000']:.2f}; blast-radius count {s3['count_seconds']:.2f} s, "
          f"{s3['count_calls_per_1000']:.2f} calls per 1,000")
    print(f"  {s3['note']}")


if __name__ == "__main__":
    main()
