"""Re-erase after a restore: a bucket (moto over HTTP) and a LanceDB table restored from copies taken before
an erasure, `lethe replay` run as a user runs it, and the erased subjects gone again with everyone else intact."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.replay import replay
from orchestrator.service import Lethe
from orchestrator.testing import FAKE_AWS_ENV, make_bucket, put_objects, versions_per_owner
from tests.fixtures.lethe import SUBJECT_KEY
from workers.targets.s3 import s3_client

pytestmark = pytest.mark.integration

LETHE = str(Path(sys.executable).with_name("lethe"))
MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - {{name: photos, kind: s3, endpoint_url: "{endpoint}", bucket: {bucket}, prefix: "users/{{user_id}}/"}}
  - name: uploads
    kind: s3
    endpoint_url: "{endpoint}"
    bucket: {bucket}
    keys_query: {{url: "sqlite:///{tmp}/app.db", sql: "SELECT k FROM uploads WHERE owner = :user_id"}}
"""
USERS = ["12", "123", "1234", "7", "8675309123"]
ERASED = ["12", "1234"]


def app_map(write_map: Callable[[str], Path], endpoint: str, bucket: str, tmp: Path) -> Path:
    """The map over the bucket, with the application database its keys_query target reads (no uploads)."""
    with sqlite3.connect(tmp / "app.db") as db:
        db.execute("CREATE TABLE IF NOT EXISTS uploads (k TEXT, owner TEXT)")
    return write_map(MAP.format(endpoint=endpoint, bucket=bucket, tmp=tmp))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LETHE, *args], env=env, capture_output=True, text=True, timeout=180)


def copy_bucket(endpoint: str, source: str, destination: str) -> None:
    """Every current object of ``source`` copied into ``destination`` (a snapshot, or its restore)."""
    client = s3_client(endpoint, None)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=source):
        for item in page.get("Contents", ()):
            client.copy_object(Bucket=destination, Key=item["Key"], CopySource={"Bucket": source, "Key": item["Key"]})


@pytest.fixture
def env(s3_endpoint: str, bucket: str, tmp_path: Path, write_map: Callable[[str], Path],
        signing_key_file: Path) -> dict[str, str]:
    """An embedded deployment (SQLite ledger, in-process worker per command) over a seeded bucket."""
    put_objects(s3_endpoint, bucket, [f"users/{u}/p{i}.jpg" for u in USERS for i in range(2)])
    put_objects(s3_endpoint, bucket, ["users/abc/p.jpg", "users/ 12/p.jpg"])  # no valid user_id: skipped
    path = app_map(write_map, s3_endpoint, bucket, tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    return {**base, **FAKE_AWS_ENV, "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'lethe.db'}",
            "LETHE_DATA_MAP": str(path), "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(signing_key_file)}


def test_replay_erases_again_what_a_restored_bucket_brought_back(env: dict[str, str], s3_endpoint: str,
                                                                 bucket: str) -> None:
    snapshot = f"{bucket}-snap"
    make_bucket(s3_endpoint, snapshot, versioned=False)
    copy_bucket(s3_endpoint, bucket, snapshot)
    taken = datetime.now(UTC)
    for user in ERASED:
        done = run(env, "submit", "--subject", f"user_id={user}", "--wait")
        assert done.returncode == 0, done.stderr
    assert not any(versions_per_owner(s3_endpoint, bucket)[u] for u in ERASED)

    copy_bucket(s3_endpoint, snapshot, bucket)  # the restore: the erased subjects are back
    assert all(versions_per_owner(s3_endpoint, bucket)[u] for u in ERASED)

    replayed = run(env, "replay", "--target", "photos", "--since", taken.isoformat(), "--json")
    assert replayed.returncode == 0, replayed.stderr
    counts = json.loads(replayed.stdout)
    assert {k: counts[k] for k in ("scanned", "invalid", "tombstoned", "filed", "already_filed")} == {
        "scanned": 7, "invalid": 2, "tombstoned": 2, "filed": 2, "already_filed": 0}
    assert counts["statuses"] == {"completed": 2}
    owners = versions_per_owner(s3_endpoint, bucket)
    assert not any(owners[u] for u in ERASED)  # gone again
    for user in ("123", "7", "8675309123", "abc", " 12"):  # never erased (12 beside 123), or no valid id
        assert owners[user] >= 1, user
    assert all(owners[u] == 4 for u in ("123", "7", "8675309123"))  # 2 photos, each as seeded and as restored
    assert "12" not in replayed.stdout.replace('"', " ").split()  # counts only: no identifier printed

    refused = run(env, "replay", "--target", "uploads")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "keys_query" in refused.stderr
    assert "Traceback" not in refused.stderr
    unknown = run(env, "replay", "--target", "nope")
    assert unknown.returncode == 2 and "no target 'nope'" in unknown.stderr


def test_replay_twice_files_each_follow_up_once(s3_endpoint: str, bucket: str, tmp_path: Path,
                                                write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun while the follow-ups are still open (no worker runs them here) files nothing new; a subject
    whose objects span several scan pages is one subject."""
    put_objects(s3_endpoint, bucket, [f"users/{u}/p.jpg" for u in USERS])
    lethe = make_lethe(data_map=app_map(write_map, s3_endpoint, bucket, tmp_path))
    with lethe.embedded_worker():
        erased = [lethe.submit({"user_id": u})[0] for u in ERASED]
        for request_id in erased:
            assert lethe.wait(request_id, timeout=60)["status"] == "completed"
    put_objects(s3_endpoint, bucket, [f"users/{u}/{p}.jpg" for u in USERS for p in ("p", "q", "r")])  # restored
    monkeypatch.setattr("orchestrator.replay.PAGE", 2)  # 15 versions: each subject spans two pages
    datamap = lethe.load_map()
    since = datetime(2000, 1, 1, tzinfo=UTC)
    first = replay(lethe, datamap, "photos", since, actor="test")
    again = replay(lethe, datamap, "photos", since, actor="test")
    assert (first.scanned, first.tombstoned, first.filed, first.already_filed) == (5, 2, 2, 0)
    assert (again.tombstoned, again.filed, again.already_filed) == (2, 0, 2)
    follows = {lethe.ledger.audit_trail(r)[0]["detail"]["follow_up_of"] for r in first.requests}
    assert follows == set(erased)
    assert {t["target"] for r in first.requests for t in lethe.ledger.status(r)["tasks"]} == {"photos"}
    later = replay(lethe, datamap, "photos", datetime.now(UTC), actor="test")  # erased before that date
    assert (later.tombstoned, later.filed) == (0, 0)


LANCE_MAP = """
version: 1
identifiers: [user_id]
targets:
  - {{name: faces, kind: lancedb, location: "{location}", table: faces, match: {{owner: "{{user_id}}"}}}}
"""


def _faces(location: Path) -> dict[str, int]:
    import lancedb

    owners = lancedb.connect(str(location)).open_table("faces").to_arrow().column("owner").to_pylist()
    return {owner: owners.count(owner) for owner in set(owners)}


def test_replay_erases_again_from_a_lancedb_table_restored_from_an_older_copy(
        tmp_path: Path, write_map: Callable[[str], Path], signing_key_file: Path) -> None:
    import lancedb
    import pyarrow as pa

    location = tmp_path / "vectors"
    owners = [u for u in USERS for _ in range(3)]
    rows = pa.table({"owner": owners, "vector": pa.FixedSizeListArray.from_arrays(
        pa.array([float(i % 7) for i in range(len(owners) * 4)], pa.float32()), 4)})
    lancedb.connect(str(location)).create_table("faces", rows)
    copy = tmp_path / "vectors-copy"
    shutil.copytree(location, copy)
    taken = datetime.now(UTC)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LETHE_")},
           "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'lethe.db'}", "LETHE_SUBJECT_KEY": SUBJECT_KEY,
           "LETHE_SIGNING_KEY": str(signing_key_file),
           "LETHE_DATA_MAP": str(write_map(LANCE_MAP.format(location=location)))}
    for user in ERASED:
        done = run(env, "submit", "--subject", f"user_id={user}", "--wait")
        assert done.returncode == 0, done.stderr
    assert not set(ERASED) & set(_faces(location))

    shutil.rmtree(location)
    shutil.copytree(copy, location)  # the older copy of the directory, as a restore puts it back
    assert set(ERASED) <= set(_faces(location))

    replayed = run(env, "replay", "--target", "faces", "--since", taken.isoformat(), "--json")
    assert replayed.returncode == 0, replayed.stderr
    counts = json.loads(replayed.stdout)
    assert (counts["tombstoned"], counts["filed"], counts["statuses"]) == (2, 2, {"completed": 2})
    assert _faces(location) == {u: 3 for u in USERS if u not in ERASED}
