"""bench: a Delta purge (delete + zero-retention vacuum + log cut + proof scans) against a bare ``delete``
without vacuum on an identical table; the difference is the price of erasing history, not just the
current version.

The table is ``files`` commits of equal size, each covering its own range of user ids (data clustered by
user, as a lake compacted by user id is), so the subject's rows sit in one file and file statistics let
both sides skip the rest.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

SUBJECT = 4242


def make_delta(uri: Path, rows: int, files: int, subject_rows: int, clustered: bool = True) -> None:
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    rng = np.random.default_rng(19)
    per_file = rows // files
    span = 5000
    for i in range(files):
        ids = rng.integers(i * span, (i + 1) * span, per_file, dtype=np.int64)
        ids[ids == SUBJECT] = SUBJECT + 1
        if clustered and i == SUBJECT // span:
            ids[:subject_rows] = SUBJECT
        elif not clustered:  # the subject's rows in every file: nothing to prune
            ids[:subject_rows // files] = SUBJECT
        write_deltalake(str(uri), pa.table({
            "user_id": ids,
            "photo": pa.array([f"p{j}" for j in range(per_file)]),
            "age": rng.integers(18, 80, per_file, dtype=np.int32),
        }), mode="append")


def bare_delete(uri: str) -> float:
    from deltalake import DeltaTable

    start = time.perf_counter()
    DeltaTable(uri).delete(f"user_id = {SUBJECT}")
    return time.perf_counter() - start


def lethe_purge(uri: str) -> dict[str, Any]:
    from orchestrator.identifiers import Subject
    from workers.targets.delta import DeltaConfig, DeltaTarget

    target = DeltaTarget(DeltaConfig(name="bench", kind="delta", uri=uri, where={"user_id": "{user_id}"}))
    subject = Subject({"user_id": str(SUBJECT)})
    start = time.perf_counter()
    deleted = target.purge(subject, lambda done=None: None)
    purge_seconds = time.perf_counter() - start
    residue = target.verify(subject)
    return {"seconds": purge_seconds, "with_verify_seconds": time.perf_counter() - start, "deleted": deleted,
            "residue": residue, "level": target.level, "files_rewritten": target.files_rewritten,
            "files_total": target.files_total}



def _pair(workdir: Path, rows: int, files: int, subject_rows: int, clustered: bool, rounds: int) -> dict[str, Any]:
    """Both sides in this process, on fresh copies of one table, ``rounds`` times; the median of each (the
    machine is shared: one round's noise is larger than the figure)."""
    source = workdir / "source"
    make_delta(source, rows, files, subject_rows, clustered)  # also warms deltalake up for both sides
    bares, lethes = [], []
    for n in range(rounds):
        bare_uri, lethe_uri = workdir / f"bare-{n}", workdir / f"lethe-{n}"
        shutil.copytree(source, bare_uri)
        shutil.copytree(source, lethe_uri)
        bares.append({"seconds": bare_delete(str(bare_uri))})
        lethes.append(lethe_purge(str(lethe_uri)))
        shutil.rmtree(bare_uri)
        shutil.rmtree(lethe_uri)
    bare = sorted(bares, key=lambda r: r["seconds"])[rounds // 2]
    lethe = sorted(lethes, key=lambda r: r["seconds"])[rounds // 2]
    return {"bare_delete": bare, "lethe_purge": lethe, "rounds": rounds, "ratio": lethe["seconds"] / bare["seconds"],
            "with_verify_ratio": lethe["with_verify_seconds"] / bare["seconds"]}


def bench_delta(workdir: Path, rows: int = 1_000_000, files: int = 20, subject_rows: int = 1000,
                rounds: int = 5) -> dict[str, Any]:
    """The figure: the subject's rows clustered in one file; ``spread``: the same rows spread over every
    file (each file is then rewritten, by both sides)."""
    result = _pair(workdir / "clustered", rows, files, subject_rows, True, rounds)
    spread = _pair(workdir / "spread", rows, files, subject_rows, False, rounds)
    return {"rows": rows, "files": files, "subject_rows": subject_rows, **result, "spread": spread}
