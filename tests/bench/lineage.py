"""Lineage at scale: `lethe lineage record` of N members (3,000,000 by default) on PostgreSQL.

    .venv/bin/python -m tests.bench.lineage [--members N] [--out bench-out]

Measures, on a fresh PostgreSQL database (LETHE_TEST_PG's server):

1. the CLI as an operator runs it: ``lethe lineage record --dataset-name … --subjects-file F`` on a file of N
   generated user ids (process start, reading, keyed hashing and the COPY; the ledger is migrated first);
2. the same members recorded again through ``Ledger.record_lineage`` with the hashes computed beforehand
   (the bulk load alone: delete of the previous members + COPY), and the hashing alone;
3. ``datasets_for`` of one member: its time and the plan PostgreSQL chooses (an index scan on
   ``ix_dataset_members_subject_hash``).

The issue's goal: 3M members "well under a minute".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from orchestrator.certificates import create_private_key
from orchestrator.config import Settings
from orchestrator.identifiers import keyed_hash
from orchestrator.service import Lethe
from tests.fixtures.services import temporary_database

BIN = Path(sys.executable).parent
KEY = "1e" * 32
MAP = ("version: 1\nidentifiers: {user_id: '[0-9]+'}\ntargets:\n"
       "  - {name: t, kind: memory, store: s, match: {owner: '{user_id}'}}\n")




def member(n: int) -> str:
    return str(100_000_000 + n)


def bench(members: int, work: Path) -> dict[str, Any]:
    subjects = work / "subjects.txt"
    with open(subjects, "w", encoding="utf-8") as out:
        for start in range(0, members, 100_000):
            out.write("".join(f"{member(n)}\n" for n in range(start, min(start + 100_000, members))))
    (work / "datamap.yaml").write_text(MAP)
    signing = work / "signing.pem"
    create_private_key(signing)
    results: dict[str, Any] = {"members": members}
    with temporary_database("lethe_bench") as db:
        env = {**os.environ, "LETHE_DATABASE_URL": db, "LETHE_SUBJECT_KEY": KEY, "LETHE_SIGNING_KEY": str(signing),
               "LETHE_DATA_MAP": str(work / "datamap.yaml"), "LETHE_LOG_LEVEL": "WARNING"}
        subprocess.run([str(BIN / "lethe"), "migrate"], env=env, check=True, capture_output=True)

        start = time.perf_counter()
        done = subprocess.run([str(BIN / "lethe"), "lineage", "record", "--dataset-name", "faces-2014",
                               "--dataset-digest", "d0e1f2a3", "--subjects-file", str(subjects)],
                              env=env, check=True, capture_output=True, text=True)
        results["cli_seconds"] = time.perf_counter() - start
        results["cli_output"] = done.stdout.strip()

        lethe = Lethe(Settings(database_url=db, subject_key=KEY, signing_key=signing,
                               data_map=work / "datamap.yaml"))
        ledger = lethe.ledger
        key = bytes.fromhex(KEY)
        start = time.perf_counter()
        hashes = [keyed_hash(key, "user_id", member(n)) for n in range(members)]
        results["hashing_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        assert ledger.record_lineage("faces-2014", "d0e1f2a3", hashes, actor="bench") == members
        results["record_again_seconds"] = time.perf_counter() - start  # deletes the previous members first
        start = time.perf_counter()
        assert ledger.record_lineage("faces-2015", "0a1b2c3d", hashes, actor="bench") == members
        results["record_second_dataset_seconds"] = time.perf_counter() - start

        probe = [keyed_hash(key, "user_id", member(members // 2))]
        statements: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            if "dataset_members" in statement:
                statements.append((statement, parameters))

        event.listen(ledger.engine, "before_cursor_execute", capture)
        ledger.datasets_for(probe)  # warm
        start = time.perf_counter()
        found = ledger.datasets_for(probe)
        results["datasets_for_ms"] = (time.perf_counter() - start) * 1000
        event.remove(ledger.engine, "before_cursor_execute", capture)
        assert found == [("faces-2014", "d0e1f2a3"), ("faces-2015", "0a1b2c3d")], found
        statement, parameters = statements[-1]
        with ledger.engine.connect() as conn:
            plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters)]
            results["table_mb"] = conn.execute(text(
                "SELECT pg_total_relation_size('dataset_members') / 1048576.0")).scalar_one()
        results["plan"] = plan
        ledger.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.lineage")
    parser.add_argument("--members", type=int, default=3_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = bench(args.members, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lineage.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"lethe lineage record, {results['members']:,} members on PostgreSQL: {results['cli_seconds']:.1f} s "
          f"(goal: well under 60 s)")
    print(f"  hashing alone {results['hashing_seconds']:.1f} s; Ledger.record_lineage with hashes ready: "
          f"{results['record_again_seconds']:.1f} s replacing the same dataset, "
          f"{results['record_second_dataset_seconds']:.1f} s for a second dataset")
    print(f"  datasets_for(one subject) {results['datasets_for_ms']:.2f} ms over {2 * results['members']:,} rows "
          f"({float(results['table_mb']):.0f} MB); plan:")
    print("\n".join(f"    {line}" for line in results["plan"]))
    print(f"written: {args.out / 'lineage.json'}")


if __name__ == "__main__":
    main()
