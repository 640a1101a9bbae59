"""``lethe demo``: a synthetic estate on embedded stores, erased through the real pipeline.

Stores: a versioned S3 photo bucket on moto's server (every user has photos with old versions, some with
delete markers) and an in-memory session store. Broker and worker run in-process; the ledger is SQLite.
Later work adds features, embeddings and models to the estate.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.config import Settings
from orchestrator.service import Lethe
from orchestrator.testing import make_bucket, put_objects, s3_server, versions_per_owner
from workers.targets.memory import MemoryStore

BUCKET = "demo-photos"
DATA_MAP = """\
version: 1
identifiers:
  user_id: "[0-9]{{1,12}}"
targets:
  - name: profile-photos
    kind: s3
    endpoint_url: {endpoint}
    bucket: {bucket}
    prefix: "users/{{user_id}}/"
  - name: sessions
    kind: memory
    store: demo-sessions
    match: {{owner: "{{user_id}}"}}
    after: [profile-photos]
stores:
  - {{name: billing-archive, not_erased: "kept 10 years by tax law (Art. 17(3)(b))"}}
"""


def pick_subjects(subjects: int, erase: int, seed: int = 7) -> list[str]:
    """Erase user 12 whenever user 123 exists too, to show a prefix never reaches past its separator."""
    chosen = ["12"] if subjects > 123 else []
    rest = [str(i) for i in random.Random(seed).sample(range(1, subjects + 1), subjects) if str(i) not in chosen]
    return (chosen + rest)[:erase]


def run_demo(subjects: int, erase: int, workdir: Path, console: Console) -> int:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    with s3_server() as endpoint:
        map_path = workdir / "datamap.yaml"
        map_path.write_text(DATA_MAP.format(endpoint=endpoint, bucket=BUCKET))
        settings = Settings(database_url=f"sqlite:///{workdir / 'lethe.db'}", data_map=map_path, broker_url=None)
        lethe = Lethe(settings)

        users = [str(i) for i in range(1, subjects + 1)]
        console.print(f"seeding {subjects} users: photos (2 versions each, some deleted) and sessions …")
        make_bucket(endpoint, BUCKET)
        put_objects(endpoint, BUCKET, [f"users/{u}/photo-{p}.jpg" for u in users for p in (1, 2)], versions=2)
        put_objects(endpoint, BUCKET, [f"users/{u}/old-avatar.jpg" for u in users[::3]], delete_marker=True)
        MemoryStore.clear()
        MemoryStore.add("demo-sessions", *({"owner": u, "session": s} for u in users for s in range(2)))
        before = versions_per_owner(endpoint, BUCKET)

        doomed = pick_subjects(subjects, erase)
        statuses = []
        with lethe.embedded_worker(), Progress(
            TextColumn("erasing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            ids = [lethe.submit({"user_id": u}, actor="demo")[0] for u in doomed]
            bar = progress.add_task("erasing", total=len(ids))
            for request_id in ids:
                statuses.append(lethe.wait(request_id, timeout=300))
                progress.advance(bar)

        after = versions_per_owner(endpoint, BUCKET)
        erased_residue = sum(after[u] for u in doomed)
        sessions = MemoryStore.records("demo-sessions")
        erased_sessions = sum(1 for r in sessions if r["owner"] in doomed)
        kept = [u for u in users if u not in doomed]
        damaged = [u for u in kept if after[u] != before[u]]
        damaged_sessions = len(kept) * 2 - sum(1 for r in sessions if r["owner"] not in doomed)
        certs = workdir / "certificates"
        certs.mkdir()
        for status in statuses:
            if status["status"] == "completed":
                cert = lethe.ledger.certificate(status["id"])
                (certs / f"{status['id']}.json").write_text(json.dumps(cert, indent=2, sort_keys=True) + "\n")
        (workdir / "lethe-public.pem").write_text(lethe.ledger.public_key_pem())
        ledger_problems = lethe.ledger.verify()

    completed = sum(1 for s in statuses if s["status"] == "completed")
    deleted = sum(t["deleted"] or 0 for s in statuses for t in s["tasks"])
    table = Table(title="lethe demo", title_justify="left", show_header=False)
    table.add_row("requests completed", f"{completed}/{len(doomed)}")
    table.add_row("items deleted (S3 versions + markers, sessions)", str(deleted))
    table.add_row("residue of erased subjects (S3, sessions)", f"{erased_residue}, {erased_sessions}")
    table.add_row("other subjects damaged (S3, sessions)", f"{len(damaged)}, {damaged_sessions}")
    table.add_row("erased subject ids (shown only in this demo)", ", ".join(doomed))
    table.add_row("ledger", f"{workdir / 'lethe.db'} ({'verified' if not ledger_problems else ledger_problems[0]})")
    table.add_row("certificates", f"{workdir / 'certificates'}/<request id>.json, key {workdir / 'lethe-public.pem'}")
    table.add_row("seconds", f"{time.monotonic() - started:.1f}")
    console.print(table)
    ok = completed == len(doomed) and not erased_residue and not erased_sessions and not damaged \
        and not damaged_sessions and not ledger_problems
    console.print("[green]every erased subject is gone and everyone else is intact[/green]" if ok
                  else "[red]demo failed: see the table above[/red]")
    return 0 if ok else 1
