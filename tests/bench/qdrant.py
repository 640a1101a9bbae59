"""bench: a Qdrant purge in local mode (read with vectors, delete, the storage file made clean of the deleted
points, the client reopened from disk) against a bare delete by filter on an identical collection, which
leaves the deleted points' bytes in the SQLite file's free pages; the difference is the price of physical
removal.

Local mode only (no server binary here). Its folder is locked to one client per process, so each side opens
its own copy of the collection, outside the clock. Writing points through the client commits each point on
its own (20k points took ~5 minutes on this machine), so the collection is written straight into local
mode's storage file in one transaction, in the client's own row format; opening the client loads it.
Every ``OWNERS``-th point is the subject's, as a person's photos are spread over a collection over time.
"""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

OWNERS = 1000  # the subject has points / OWNERS points
SUBJECT = "420"
DIM = 16
COLLECTION = "faces"


def make_qdrant(location: Path, points: int) -> None:
    import numpy as np
    from qdrant_client import QdrantClient, models
    from qdrant_client.local.persistence import CollectionPersistence

    client = QdrantClient(path=str(location))
    client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    client.close()
    vectors = np.random.default_rng(3).random((points, DIM), dtype=np.float32)
    rows = ((CollectionPersistence.encode_key(i),
             pickle.dumps(models.PointStruct(id=i, vector=vectors[i].tolist(), payload={"owner": str(i % OWNERS)})))
            for i in range(points))
    storage = sqlite3.connect(location / "collection" / COLLECTION / "storage.sqlite")
    with storage:
        storage.execute("CREATE TABLE IF NOT EXISTS points (id TEXT PRIMARY KEY, point BLOB)")
        storage.executemany("INSERT INTO points VALUES (?, ?)", rows)
    storage.close()


def bare_delete(location: Path) -> float:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(location))
    selector = models.Filter(must=[models.FieldCondition(key="owner", match=models.MatchValue(value=SUBJECT))])
    start = time.perf_counter()
    client.delete(COLLECTION, points_selector=models.FilterSelector(filter=selector), wait=True)
    seconds = time.perf_counter() - start
    client.close()
    return seconds


def lethe_purge(location: Path) -> dict[str, Any]:
    from orchestrator.identifiers import Subject
    from workers.targets.qdrant import QdrantConfig, QdrantTarget, close_clients, qdrant_client

    target = QdrantTarget(QdrantConfig(name="faces", kind="qdrant", location=str(location), collection=COLLECTION,
                                       match={"owner": "{user_id}"}))
    subject = Subject({"user_id": SUBJECT})
    qdrant_client(location=str(location))  # opened (the whole collection loaded) before the clock, as the bare side
    start = time.perf_counter()
    deleted = target.purge(subject, lambda done=None: None)
    seconds = time.perf_counter() - start
    verify_start = time.perf_counter()
    residue = target.verify(subject)
    verify_seconds = time.perf_counter() - verify_start
    close_clients()
    return {"seconds": seconds, "verify_seconds": verify_seconds, "deleted": deleted, "residue": residue,
            "level": target.level}


def bench_qdrant(workdir: Path, points: int = 1_000_000, rounds: int | None = None) -> dict[str, Any]:
    """Both sides on fresh copies of one collection, ``rounds`` times; medians (the machine is shared). At
    1M points a round takes ~5 minutes (each side's client loads the collection, ~50 s), so one round
    there, three up to 100k."""
    rounds = rounds or (3 if points <= 100_000 else 1)
    source = workdir / "source"
    started = time.perf_counter()
    make_qdrant(source, points)
    build_seconds = time.perf_counter() - started
    bares, lethes = [], []
    for n in range(rounds):
        bare_dir, lethe_dir = workdir / f"bare-{n}", workdir / f"lethe-{n}"
        shutil.copytree(source, bare_dir)
        shutil.copytree(source, lethe_dir)
        bares.append({"seconds": bare_delete(bare_dir)})
        lethes.append(lethe_purge(lethe_dir))
        shutil.rmtree(bare_dir)
        shutil.rmtree(lethe_dir)
    bare = sorted(bares, key=lambda r: r["seconds"])[rounds // 2]
    lethe = sorted(lethes, key=lambda r: r["seconds"])[rounds // 2]
    return {"points": points, "erased": points // OWNERS, "rounds": rounds, "build_seconds": build_seconds,
            "bare_delete": bare, "lethe_purge": lethe, "ratio": lethe["seconds"] / bare["seconds"],
            "bare_seconds_all": [r["seconds"] for r in bares], "lethe_seconds_all": [r["seconds"] for r in lethes]}
