"""`lethe demo` as a user runs it: a bare machine, embedded stores, the real pipeline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

pytestmark = pytest.mark.integration


def test_demo_erases_and_verifies(tmp_path: Path) -> None:
    """The demo completes every erasure, finds no residue and no damage, and verifies its ledger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    result = subprocess.run([str(Path(sys.executable).with_name("lethe")), "demo", "--subjects", "40", "--erase", "3",
                             "--workdir", str(tmp_path / "demo")], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every erased user is gone from every store and everyone else is intact" in result.stdout
    assert "requests completed: 3/3" in result.stdout
    # Read as a user reads it, piped: no column cut to 80 ("profile-phot…"), every column and figure explained,
    # and none of the stores' own log lines (Feast's materialisation, MLflow's migrations) mixed in.
    assert "profile-photos " in result.stdout and "…" not in result.stdout
    assert "others changed: of the" in result.stdout and "finished in " in result.stdout
    assert "INFO" not in result.stdout + result.stderr and "Materializing" not in result.stdout, result.stderr
    assert len(list((tmp_path / "demo" / "certificates").glob("*.json"))) == 3
    erased = set(re.search(r"erased ids \(shown only in this demo\): ([0-9, ]+)", result.stdout)
                 .group(1).replace(" ", "").split(","))  # type: ignore[union-attr]
    assert len(erased) == 3
    _manifest_holds_no_erased_user(tmp_path / "demo" / "lake" / "faces_manifest", erased, subjects=40)
    _users_table_masks_only_the_erased(tmp_path / "demo" / "app.db", erased, subjects=40)


def _manifest_holds_no_erased_user(uri: Path, erased: set[str], subjects: int) -> None:
    """The Delta training manifest: no version that can still be loaded, and no data file under the table,
    holds a row of an erased user; every other user keeps both photos' rows."""
    current = DeltaTable(str(uri))
    for version in range(current.version() + 1):
        try:
            rows = DeltaTable(str(uri), version=version).to_pyarrow_table(columns=["user_id"])
        except Exception:  # vacuumed or cut from the log: time travel cannot reach it
            continue
        assert not erased & {str(u) for u in rows.column("user_id").to_pylist()}, f"version {version}"
    files = [p for p in uri.rglob("*.parquet") if "_delta_log" not in p.parts]
    assert files
    for path in files:
        assert not erased & {str(u) for u in pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist()}
    kept = Counter(str(u) for u in current.to_pyarrow_table(columns=["user_id"]).column("user_id").to_pylist())
    assert kept == {str(u): 2 for u in range(1, subjects + 1) if str(u) not in erased}


def _users_table_masks_only_the_erased(db: Path, erased: set[str], subjects: int) -> None:
    """The application's users table: erased users' rows are kept (foreign keys elsewhere point at them) with
    every personal column masked; everyone else's row is as the demo wrote it."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = {str(r[0]): r[1:] for r in conn.execute(
            "SELECT id, email, display_name, age, gender, location FROM users")}
    conn.close()
    assert set(rows) == {str(u) for u in range(1, subjects + 1)}
    for uid, (email, name, age, gender, location) in rows.items():
        if uid in erased:
            assert (email, name, age, gender, location) == (None, "erased", None, None, None)
        else:
            assert (email, name) == (f"user{uid}@example.org", f"User {uid}") and age and gender and location
