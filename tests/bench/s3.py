"""S3 erasure rate: the S3 target's whole task against a raw boto3 loop, on moto's S3 server over HTTP.

``python -m tests.bench.s3 --objects 3000`` prints the figures; ``make bench`` imports ``bench_s3``.

One subject's ``objects`` versions (one per key, under ``users/42/``) are erased by the raw loop and by what
a worker runs for one S3 task (workers/tasks.py ``_run``: ``count``, ``purge`` and ``verify`` on one
``S3Target``), each on its own freshly seeded, identical bucket, ``rounds`` times in a rotating order; the
medians are compared. Two task paths:

- **normal** (a request not approved in advance, ``objects`` within ``max_items``): the count keeps its
  listing, the purge deletes from it, verify lists once more. ``rate_ratio`` is this path's.
- **approved** (``max_items`` below ``objects``: approved in advance for the count): the count is over
  ``max_items`` and keeps its listing all the same (past 10,000 versions sealed on disk), so the purge
  lists nothing either: the same calls as the normal path.

All use the same boto3 client (lethe's, same config); a run of the raw loop on a stock boto3 client shows
what lethe's client settings save. Wall-clock seconds give the rate ratios; ``rate_ratio_cpu`` compares the
process's CPU seconds (client and moto's threads), steadier on a busy machine. S3 calls are counted per
operation (every HTTP request, retries included) and per 1,000 versions.

The raw loop is ListObjectVersions pages + one DeleteObjects per page (up to 1,000 keys), with no count and
no verify: the lower bound on the work. It deletes a page once the next page has been listed: a loop that
deletes a page and then asks for the next one continues from a version it deleted, which moto answers with
an empty page (it leaves everything after the first page behind, and so looks three times faster than it
is). Every run must leave no residue, or the bench fails.

**Small request, big bucket**: the fixed cost of a ``small``-object request on a bucket holding
``bystanders`` other objects (moto scans the whole bucket on every listing, so listings are what a small
request pays for): the normal task, the same task without a kept listing (the count, then a purge that lists
again: how every task ran before the count kept its listing), and the raw loop, on the same bucket.

Seeding goes straight into moto's backend (the server runs in this process): puts over HTTP run at
~160/s, which would make a 10,000-object bench take minutes per bucket. Only the timed runs use HTTP.
"""

from __future__ import annotations

import argparse
import functools
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
    "prefix, i.e. ~3.5 DeleteObjects calls/s per prefix; calls_per_1000 (lethe and raw) is what projects. "
    "A task counts before it deletes, so on moto its pages are all listed from the full bucket, where the "
    "raw loop lists its later pages from a bucket it has half emptied: rate_ratio_listed_first compares "
    "against a raw loop that also lists first."
)
SUBJECT = Subject({"user_id": "42"})


class Run(NamedTuple):
    seconds: float
    cpu_seconds: float
    requests: dict[str, int]


def _seed(bucket: str, objects: int, prefix: str = PREFIX) -> None:
    """``objects`` versions, one per key, written by moto's backend directly (identical to HTTP puts)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for i in range(objects):
        backend.put_object(bucket, f"{prefix}obj-{i:06d}", f"v{i}".encode())


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


def raw_listed_first(client: Any, bucket: str) -> int:
    """The baseline of any purge that must count before it deletes: list every page, then DeleteObjects
    per 1,000. On moto it pays more than ``raw_purge``: every page is listed from the full bucket, where
    the loop lists its later pages from a bucket it has already half emptied (see NOTE)."""
    listed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
              for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=PREFIX)
              for v in (*page.get("Versions", ()), *page.get("DeleteMarkers", ()))]
    for start in range(0, len(listed), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": listed[start:start + 1000], "Quiet": True})
    return len(listed)


def task(endpoint: str, bucket: str, max_items: int | None = None, keep: bool = True) -> int:
    """What a worker runs for one S3 task of the subject: count, purge, verify, on one instance (as
    workers/tasks.py ``_run``). ``keep=False`` purges on a second instance, which has no kept listing."""
    def target() -> S3Target:
        return S3Target(S3Config(name="bench", kind="s3", endpoint_url=endpoint, bucket=bucket,
                                 prefix="users/{user_id}/", max_items=max_items))

    counting = target()
    counted = counting.count(SUBJECT)
    purging = counting if keep else target()
    deleted = purging.purge(SUBJECT, lambda done=None: None)
    residue = purging.verify(SUBJECT)
    assert deleted == counted and residue == 0, (counted, deleted, residue)
    return deleted


class Meter:
    """Times a run (wall and process CPU) and counts the S3 requests the clients send meanwhile."""

    def __init__(self, *clients: Any) -> None:
        self.sent: Counter[str] = Counter()
        for client in clients:
            client.meta.events.register("before-send.s3", self._on_send)

    def _on_send(self, event_name: str, **_: Any) -> None:  # every HTTP request, retries included
        self.sent[event_name.rsplit(".", 1)[-1]] += 1

    def run(self, work: Callable[[], int], expected: int) -> Run:
        gc.collect()
        self.sent.clear()
        wall, cpu = time.perf_counter(), time.process_time()  # CPU: client and moto, one process
        done = work()
        run = Run(time.perf_counter() - wall, time.process_time() - cpu, dict(self.sent))
        assert done == expected, (done, expected)
        return run


def bench_s3(objects: int, rounds: int = 5, bystanders: int = 18_000, small: int = 10) -> dict[str, Any]:
    """Medians of ``rounds`` raw, normal and approved erasures of ``objects`` versions each, their S3
    requests, and a ``small``-object request's fixed cost on a bucket of ``bystanders`` other objects."""
    import boto3

    os.environ.update(FAKE_AWS_ENV)
    with s3_server() as endpoint:
        client = s3_client(endpoint, None)
        # boto3's defaults (its own session, dateutil timestamps): what the shared client saves, for the record.
        stock = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
        meter = Meter(client, stock)
        erasures: dict[str, Callable[[str], int]] = {
            "raw": lambda bucket: raw_purge(client, bucket),
            "raw_listed_first": lambda bucket: raw_listed_first(client, bucket),
            "normal": lambda bucket: task(endpoint, bucket),
            "approved": lambda bucket: task(endpoint, bucket, max_items=max(1, objects - 1)),
            "raw_stock_client": lambda bucket: raw_purge(stock, bucket),
        }
        runs: dict[str, list[Run]] = {kind: [] for kind in erasures}
        for n in range(rounds):
            kinds = list(erasures)
            kinds = kinds[n % len(kinds):] + kinds[:n % len(kinds)]  # rotate: none always runs first
            for kind in kinds:
                bucket = f"bench-{n}-{kind.replace('_', '-')}"
                make_bucket(endpoint, bucket)
                _seed(bucket, objects)
                runs[kind].append(meter.run(functools.partial(erasures[kind], bucket), objects))
                assert _residue(client, bucket) == 0, f"{kind} left residue"
                client.delete_bucket(Bucket=bucket)  # empty now: moto's memory stays flat across rounds

        # A small request on a big bucket: each way erases the same subject, re-seeded, beside the same crowd.
        make_bucket(endpoint, "bench-small")
        _seed("bench-small", bystanders, prefix="crowd/")
        ways: dict[str, Callable[[], int]] = {
            "normal": lambda: task(endpoint, "bench-small"),
            "listed_twice": lambda: task(endpoint, "bench-small", keep=False),
            "raw": lambda: raw_purge(client, "bench-small"),
        }
        fixed: dict[str, list[Run]] = {kind: [] for kind in ways}
        for n in range(rounds):
            for kind in list(ways)[n % len(ways):] + list(ways)[:n % len(ways)]:
                _seed("bench-small", small)
                fixed[kind].append(meter.run(ways[kind], small))

    def median(kind: str, field: str = "seconds") -> float:
        return statistics.median(getattr(r, field) for r in runs[kind])

    def per_1000(kind: str, operation: str | None = None) -> float:
        requests = statistics.median(sum(n for op, n in r.requests.items() if operation in (None, op))
                                     for r in runs[kind])
        return requests * 1000 / objects

    def small_median(kind: str, field: str = "seconds") -> float:
        return statistics.median(getattr(r, field) for r in fixed[kind])

    raw, normal, approved = median("raw"), median("normal"), median("approved")
    return {
        "objects": objects,
        "rounds": rounds,
        "raw_seconds": raw,
        "lethe_seconds": normal,
        "approved_seconds": approved,
        "rate_ratio": raw / normal,
        "raw_listed_first_seconds": median("raw_listed_first"),
        "rate_ratio_listed_first": median("raw_listed_first") / normal,
        "rate_ratio_listed_first_cpu": median("raw_listed_first", "cpu_seconds") / median("normal", "cpu_seconds"),
        "approved_rate_ratio": raw / approved,
        "rate_ratio_cpu": median("raw", "cpu_seconds") / median("normal", "cpu_seconds"),
        "approved_rate_ratio_cpu": median("raw", "cpu_seconds") / median("approved", "cpu_seconds"),
        "calls_per_1000": per_1000("normal"),
        "approved_calls_per_1000": per_1000("approved"),
        "raw_calls_per_1000": per_1000("raw"),
        "deletes_per_1000": per_1000("normal", "DeleteObjects"),
        "lethe_requests": runs["normal"][-1].requests,
        "approved_requests": runs["approved"][-1].requests,
        "raw_requests": runs["raw"][-1].requests,
        "lethe_objects_per_second": objects / normal,
        "raw_objects_per_second": objects / raw,
        "raw_stock_client_seconds": median("raw_stock_client"),
        "seconds_all": {kind: [round(r.seconds, 3) for r in runs[kind]] for kind in runs},
        "small_request": {
            "objects": small,
            "bystanders": bystanders,
            **{f"{kind}_seconds": small_median(kind) for kind in fixed},
            **{f"{kind}_cpu_seconds": small_median(kind, "cpu_seconds") for kind in fixed},
            **{f"{kind}_requests": runs_[-1].requests for kind, runs_ in fixed.items()},
            "ratio": small_median("normal") / small_median("raw"),
            "listed_twice_ratio": small_median("listed_twice") / small_median("raw"),
            "ratio_cpu": small_median("normal", "cpu_seconds") / small_median("raw", "cpu_seconds"),
            "listed_twice_ratio_cpu": small_median("listed_twice", "cpu_seconds") / small_median("raw", "cpu_seconds"),
        },
        "note": NOTE,
    }


def summary(s3: dict[str, Any]) -> list[str]:
    """The figures as ``make bench`` and ``python -m tests.bench.s3`` print them."""
    small = s3["small_request"]
    calls = lambda requests: sum(requests.values())  # noqa: E731
    return [
        f"s3 erasure: {s3['objects']:,} versions, median of {s3['rounds']}: raw boto3 {s3['raw_seconds']:.2f} s; "
        f"normal task (count, purge from its listing, verify) {s3['lethe_seconds']:.2f} s -> rate "
        f"{s3['rate_ratio']:.2f}x of raw (goal >= 0.9x; CPU {s3['rate_ratio_cpu']:.2f}x), "
        f"{s3['calls_per_1000']:.2f} S3 calls per 1,000 versions (goal <= 2.1; raw {s3['raw_calls_per_1000']:.2f}); "
        f"{s3['rate_ratio_listed_first']:.2f}x of a raw loop that lists everything before deleting, as a count must",
        f"  approved task (count over max_items, purge from its listing, verify) {s3['approved_seconds']:.2f} s -> "
        f"{s3['approved_rate_ratio']:.2f}x of raw, {s3['approved_calls_per_1000']:.2f} calls per 1,000",
        f"  small request: {small['objects']} objects on a bucket of {small['bystanders']:,} others: normal task "
        f"{small['normal_seconds']:.2f} s ({calls(small['normal_requests'])} calls), listed twice "
        f"{small['listed_twice_seconds']:.2f} s ({calls(small['listed_twice_requests'])} calls), raw loop "
        f"{small['raw_seconds']:.2f} s ({calls(small['raw_requests'])} calls) -> {small['ratio']:.2f}x raw "
        f"(was {small['listed_twice_ratio']:.2f}x; CPU {small['ratio_cpu']:.2f}x, "
        f"was {small['listed_twice_ratio_cpu']:.2f}x)",
        f"  {s3['note']}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.s3", description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bystanders", type=int, default=18_000, help="other objects in the small request's bucket")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    s3 = bench_s3(args.objects, args.rounds, args.bystanders)
    print(json.dumps(s3, indent=2) if args.json else "\n".join(summary(s3)))


if __name__ == "__main__":
    main()
