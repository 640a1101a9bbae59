"""`lethe check-map --probe` as a user runs it: the map's sql targets reflected on a real SQLite database,
tables that reference a target's table without an earlier target reported, exit 2 while any remain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.integration

LETHE = str(Path(sys.executable).with_name("lethe"))
MAP = """
version: 1
identifiers: [user_id]
targets:
{orders}  - name: app-users
    kind: sql
    url: "sqlite:///{db}"
    table: users
    where: {{id: "{{user_id}}"}}
{after}"""
ORDERS = """  - name: app-orders
    kind: sql
    url: "sqlite:///{db}"
    table: orders
    where: {{user_id: "{{user_id}}"}}
"""


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    db = create_engine(f"sqlite:///{path}")
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)"))
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, "
                          "CONSTRAINT fk_orders_user FOREIGN KEY (user_id) REFERENCES users (id))"))
    db.dispose()
    return path


def check_map(tmp_path: Path, text_: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "datamap.yaml"
    path.write_text(text_)
    return subprocess.run([LETHE, "check-map", str(path), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"}, cwd=tmp_path)


def test_probe_reports_a_referencing_table_without_a_target(tmp_path: Path, app_db: Path) -> None:
    """orders references users and no target erases it first: one line naming the foreign key, exit 2.
    Without --probe the same map passes (nothing is connected to)."""
    text_ = MAP.format(db=app_db, orders="", after="")
    assert check_map(tmp_path, text_).returncode == 0
    probed = check_map(tmp_path, text_, "--probe")
    assert probed.returncode == 2, probed
    assert "app-users" in probed.stderr and "fk_orders_user" in probed.stderr
    assert "Traceback" not in probed.stderr


def test_probe_passes_when_the_referencing_table_is_erased_first(tmp_path: Path, app_db: Path) -> None:
    text_ = MAP.format(db=app_db, orders=ORDERS.format(db=app_db), after="    after: [app-orders]\n")
    probed = check_map(tmp_path, text_, "--probe")
    assert probed.returncode == 0, probed
    assert "probe: no problems found" in probed.stdout


def test_probe_reports_a_missing_column(tmp_path: Path, app_db: Path) -> None:
    text_ = MAP.format(db=app_db, orders="", after="").replace("where: {id:", "where: {owner:")
    probed = check_map(tmp_path, text_, "--probe")
    assert probed.returncode == 2 and "has no column owner" in probed.stderr
