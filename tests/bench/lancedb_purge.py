"""bench: a LanceDB purge (read, delete, compaction of the fragments that held the subject, cleanup of every
older version, byte scan) against a bare ``delete`` on an identical table, which leaves the rows in the data
files and in every older version; the difference is the price of physical removal.

The table is ``fragments`` appends of equal size (a fragment and a version each, as a table fed in batches
is). In the figure the subject's vectors were written together and sit in one fragment (as when a person's
library is embedded on upload); ``spread`` puts them in every fragment, so every fragment is rewritten.
Both sides run in this process, lance loaded before either clock starts (a worker loads it once), on fresh
copies of one table, ``rounds`` times after one uncounted warm-up round (a worker's first purge pays lance's
lazy set-up once); the medians are reported (the machine is shared).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

OWNERS = 1000  # the subject has rows / OWNERS vectors
SUBJECT = "420"  # clustered, its rows sit in a middle fragment
DIM = 16


def make_lance(location: Path, rows: int, fragments: int, clustered: bool) -> None:
    import lancedb
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(7)
    per = rows // fragments
    table = None
    for f in range(fragments):
        index = np.arange(f * per, (f + 1) * per)
        owners = index // (rows // OWNERS) if clustered else index % OWNERS
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(per * DIM, dtype=np.float32)), DIM)
        batch = pa.table({"owner": owners.astype(str), "vector": vectors})
        if table is None:
            table = lancedb.connect(str(location)).create_table("faces", data=batch)
        else:
            table.add(batch)


def bare_delete(location: Path) -> float:
    import lancedb

    table = lancedb.connect(str(location)).open_table("faces")
    start = time.perf_counter()
    table.delete(f"owner = '{SUBJECT}'")
    return time.perf_counter() - start


def lethe_purge(location: Path) -> dict[str, Any]:
    from orchestrator.identifiers import Subject
    from workers.targets.lancedb import LanceDBConfig, LanceDBTarget

    target = LanceDBTarget(LanceDBConfig(name="faces", kind="lancedb", location=str(location), table="faces",
                                         match={"owner": "{user_id}"}))
    subject = Subject({"user_id": SUBJECT})
    start = time.perf_counter()
    deleted = target.purge(subject, lambda done=None: None)
    seconds = time.perf_counter() - start
    verify_start = time.perf_counter()
    residue = target.verify(subject)
    return {"seconds": seconds, "verify_seconds": time.perf_counter() - verify_start, "deleted": deleted,
            "residue": residue, "level": target.level, "fragments_rewritten": target.fragments_rewritten,
            "fragments_total": target.fragments_total}


def _pair(workdir: Path, rows: int, fragments: int, clustered: bool, rounds: int) -> dict[str, Any]:
    import lance  # noqa: F401 - loaded before the clocks, as in a worker that has purged before
    import lancedb  # noqa: F401

    source = workdir / "source"
    make_lance(source, rows, fragments, clustered)
    bares, lethes = [], []
    for n in range(-1, rounds):  # round -1 warms both paths up (lance's first compaction, scanners), uncounted
        bare_dir, lethe_dir = workdir / f"bare-{n}", workdir / f"lethe-{n}"
        shutil.copytree(source, bare_dir)
        shutil.copytree(source, lethe_dir)
        bare, lethe = {"seconds": bare_delete(bare_dir)}, lethe_purge(lethe_dir)
        if n >= 0:
            bares.append(bare)
            lethes.append(lethe)
        shutil.rmtree(bare_dir)
        shutil.rmtree(lethe_dir)
    bare = sorted(bares, key=lambda r: r["seconds"])[rounds // 2]
    lethe = sorted(lethes, key=lambda r: r["seconds"])[rounds // 2]
    return {"raw_delete": bare, "lethe_purge": lethe, "rounds": rounds,
            "compaction_cost_ratio": lethe["seconds"] / bare["seconds"],
            "bare_seconds_all": [r["seconds"] for r in bares], "lethe_seconds_all": [r["seconds"] for r in lethes]}


def bench_lancedb(workdir: Path, rows: int = 1_000_000, fragments: int = 10, rounds: int = 5) -> dict[str, Any]:
    """The figure: the subject's vectors in one fragment of ``fragments``; ``spread``: in every fragment."""
    result = _pair(workdir / "clustered", rows, fragments, True, rounds)
    spread = _pair(workdir / "spread", rows, fragments, False, rounds)
    erased = rows // OWNERS
    return {"rows": rows, "erased": erased, "fragments": fragments, **result,
            "vectors_per_second": erased / result["lethe_purge"]["seconds"], "spread": spread}
