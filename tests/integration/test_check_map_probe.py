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


# -- every kind and every lookup (s3 on moto over HTTP, lookups on SQLite and PostgreSQL) ---------------
FULL_MAP = """
version: 1
identifiers: [email, user_id]
identities:
  - name: user-by-email
    from: email
    to: user_id
    url: "{identity_url}"
    sql: "SELECT id FROM users WHERE email = :email"
targets:
  - name: photos
    kind: s3
    endpoint_url: "{endpoint}"
    bucket: {bucket}
    prefix: "users/{{user_id}}/"
  - name: uploads
    kind: s3
    endpoint_url: "{endpoint}"
    bucket: {bucket}
    keys_query:
      url: "sqlite:///{db}"
      sql: "SELECT object_key FROM {uploads_table} WHERE owner_id = :user_id"
  - name: sessions
    kind: memory
    store: sessions
    match: {{user_id: "{{user_id}}"}}
"""


@pytest.fixture
def lookup_db(tmp_path: Path) -> Path:
    path = tmp_path / "lookups.db"
    db = create_engine(f"sqlite:///{path}")
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE uploads (object_key TEXT, owner_id INTEGER)"))
        conn.execute(text("INSERT INTO uploads VALUES ('users/7/a.jpg', 7)"))
    db.dispose()
    return path


@pytest.fixture
def identity_url(pg_database: str) -> str:
    db = create_engine(pg_database)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)"))
        conn.execute(text("INSERT INTO users VALUES (7, 'ann@example.com')"))
    db.dispose()
    return pg_database


def full_map(endpoint: str, bucket: str, db: Path, identity_url: str, uploads_table: str = "uploads") -> str:
    return FULL_MAP.format(endpoint=endpoint, bucket=bucket, db=db, identity_url=identity_url,
                           uploads_table=uploads_table)


def test_probe_of_a_good_map_is_clean(tmp_path: Path, s3_endpoint: str, bucket: str, lookup_db: Path,
                                      identity_url: str) -> None:
    """Every target kind, keys_query and identities: resolution reached, nothing reported, exit 0; the
    probe returns no row of any subject (ann's email and key are nowhere in what it prints)."""
    probed = check_map(tmp_path, full_map(s3_endpoint, bucket, lookup_db, identity_url), "--probe")
    assert probed.returncode == 0, probed
    assert "probe: no problems found" in probed.stdout
    assert "ann@example.com" not in probed.stdout + probed.stderr
    assert "users/7/a.jpg" not in probed.stdout + probed.stderr


def test_probe_reports_a_missing_bucket(tmp_path: Path, s3_endpoint: str, lookup_db: Path,
                                        identity_url: str) -> None:
    """A bucket that does not exist passed check-map and failed only at run time: now one line per target
    naming the bucket, exit 2, no traceback, and the bucket is not created by the probe."""
    import boto3

    probed = check_map(tmp_path, full_map(s3_endpoint, "no-such-bucket", lookup_db, identity_url), "--probe")
    assert probed.returncode == 2, probed
    lines = [line for line in probed.stderr.splitlines() if "no-such-bucket" in line]
    assert len(lines) == 2 and all("does not exist" in line for line in lines), probed.stderr
    assert "target 'photos'" in probed.stderr and "target 'uploads'" in probed.stderr
    assert "Traceback" not in probed.stderr
    names = [b["Name"] for b in boto3.client("s3", endpoint_url=s3_endpoint).list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names


def test_probe_reports_an_unreachable_resolution_and_a_refused_lookup(
        tmp_path: Path, s3_endpoint: str, bucket: str, lookup_db: Path) -> None:
    """The identity's PostgreSQL is on a port nothing listens on: reported as unreachable; the keys_query
    names a table that does not exist: reported as refused, with the database's own reason."""
    dead = "postgresql://postgres@127.0.0.1:1/test"
    probed = check_map(tmp_path, full_map(s3_endpoint, bucket, lookup_db, dead, uploads_table="upload"), "--probe")
    assert probed.returncode == 2, probed
    assert "identity 'user-by-email': sql: cannot reach its database" in probed.stderr, probed.stderr
    assert "target 'uploads': keys_query: its database refused the statement" in probed.stderr
    assert "no such table: upload" in probed.stderr
    assert "Traceback" not in probed.stderr
    missing = check_map(tmp_path, full_map(s3_endpoint, bucket, tmp_path / "none.db", dead), "--probe")
    assert "target 'uploads': keys_query: its SQLite database file does not exist" in missing.stderr
    assert not (tmp_path / "none.db").exists()  # the probe creates no empty database in its place


def test_probe_versioning_settings_that_stop_a_purge(s3_endpoint: str, bucket: str) -> None:
    """An Object Lock default retention keeps every new version: the probe says so before any request."""
    import boto3

    from workers.targets.s3 import S3Config, S3Target

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    locked = f"{bucket}-locked"
    client.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 30}}})
    config = {"name": "p", "kind": "s3", "endpoint_url": s3_endpoint, "prefix": "users/{user_id}/"}
    assert S3Target(S3Config(**config, bucket=bucket)).probe([]) == []
    problems = S3Target(S3Config(**config, bucket=locked)).probe([])
    assert len(problems) == 1 and "Object Lock default retention (GOVERNANCE, 30 days)" in problems[0]
