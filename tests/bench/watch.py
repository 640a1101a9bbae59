"""bench: one resurrection-watch window (LETHE_WATCH_ITEMS = 1,000 object versions of an S3 prefix target, on
moto over HTTP) against the raw ListObjectVersions call it is built on, with ``tombstones`` tombstones in a
PostgreSQL ledger (none of them matching: the figure is the steady cost of looking, not of filing).

A window is one listing page, each value validated and hashed, and one tombstone query for the page. The
issue's budget, "1% of 100k tombstones per hour", is 1,000 identifiers an hour per target: one window, so
the figure also reports the share of one core an hourly window takes (``duty_per_hour``), and what the
alternative (one read-back per sampled subject, as ``verify`` does) would take for as many subjects.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from orchestrator.certificates import create_private_key
from orchestrator.config import Settings
from orchestrator.ledger.models import Tombstone
from orchestrator.service import Lethe
from orchestrator.testing import make_bucket, put_objects, s3_server
from orchestrator.watch import Watch
from tests.fixtures.services import temporary_database
from workers.targets.s3 import s3_client

SUBJECT_KEY = "5a" * 32
MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - {{name: photos, kind: s3, endpoint_url: "{endpoint}", bucket: watch, prefix: "users/{{user_id}}/"}}
"""


def counted_calls(client: Any) -> dict[str, int]:
    """S3 operations made through ``client`` from now on, by name."""
    calls: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    client.meta.events.register("before-call.s3", count)
    return calls


def bench_watch(objects: int = 1000, tombstones: int = 100_000, items: int = 1000, rounds: int = 5,
                database_url: str | None = None) -> dict[str, Any]:
    with s3_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        make_bucket(endpoint, "watch")
        put_objects(endpoint, "watch", [f"users/{i}/p.jpg" for i in range(objects)])
        key = Path(tmp) / "signing.pem"
        create_private_key(key)
        (Path(tmp) / "datamap.yaml").write_text(MAP.format(endpoint=endpoint))
        with temporary_database("lethe_watch") if database_url is None else nullcontext(database_url) as url:
            lethe = Lethe(Settings(database_url=url, subject_key=SUBJECT_KEY, signing_key=key,  # type: ignore[arg-type]
                                   data_map=Path(tmp) / "datamap.yaml"))
            lethe.migrate()
            now = datetime.now(UTC)
            with lethe.ledger.engine.begin() as conn:  # erased subjects the bucket does not hold
                for start in range(0, tombstones, 10_000):
                    conn.execute(insert(Tombstone), [
                        {"subject_hash": uuid.uuid4().hex * 2, "request_id": str(uuid.uuid4()), "erased_at": now}
                        for _ in range(start, min(tombstones, start + 10_000))])
            datamap = lethe.load_map()
            client = s3_client(endpoint, None)
            calls = counted_calls(client)
            Watch(lethe, items=items).run(datamap)  # warm: the adapter, the client's connection, the ledger
            window, raw, watch_calls = [], [], 0
            for _ in range(rounds):  # alternate, the median counts
                before = sum(calls.values())
                started = time.perf_counter()
                tally = Watch(lethe, items=items).run(datamap)["photos"]
                window.append(time.perf_counter() - started)
                watch_calls += sum(calls.values()) - before
                started = time.perf_counter()
                client.list_object_versions(Bucket="watch", Prefix="users/", MaxKeys=items)
                raw.append(time.perf_counter() - started)
            # The alternative the watch does not take: one read-back per sampled subject (what verify does
            # per target), had lethe kept identifiers to sample. Timed on 50 subjects, priced for the window.
            started = time.perf_counter()
            for i in range(50):
                client.list_object_versions(Bucket="watch", Prefix=f"users/{i}/")
            per_subject = (time.perf_counter() - started) / 50
            lethe.ledger.engine.dispose()
    seconds, baseline = statistics.median(window), statistics.median(raw)
    return {"objects": objects, "tombstones": tombstones, "items": items, "rounds": rounds,
            "identifiers": tally.scanned, "tombstoned": tally.tombstoned, "filed": tally.filed,
            "window_seconds": seconds, "raw_list_seconds": baseline, "ratio": seconds / baseline,
            "s3_calls_per_window": watch_calls / rounds,
            "duty_per_hour": seconds / 3600, "per_subject_read_seconds": per_subject,
            "per_subject_window_seconds": per_subject * items, "per_subject_ratio": per_subject * items / seconds}
