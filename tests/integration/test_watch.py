"""The resurrection watch on a real bucket (moto over HTTP): residue of an erased subject planted in the
store is found on the pass whose window reaches it, the follow-up erases it, /metrics counts it; a subject
never erased is never touched. And ``lethe.store.restored`` files the same follow-ups as ``lethe replay``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from kombu import Connection

from orchestrator.api import create_app
from orchestrator.events import DEAD_QUEUE, STORE_RESTORED, declare, make_event, publish, publish_store_restored
from orchestrator.service import Lethe
from orchestrator.testing import FAKE_AWS_ENV, put_objects, versions_per_owner
from orchestrator.watch import Watch
from tests.fixtures.events import KEY, drain_dead, request_ids, running_intake, wait_for
from tests.fixtures.lethe import SUBJECT_KEY

pytestmark = pytest.mark.integration
OPERATOR_TOKEN = "ops-5d1e9b7c3a0f8e6d4b2c"

MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - {{name: photos, kind: s3, endpoint_url: "{endpoint}", bucket: {bucket}, prefix: "users/{{user_id}}/"}}
  - {{name: sessions, kind: memory, store: sessions, match: {{owner: "{{user_id}}"}}}}
"""


def erase(lethe: Lethe, user: str) -> str:
    request_id, _ = lethe.submit({"user_id": user})
    assert lethe.wait(request_id, timeout=60)["status"] == "completed"
    return request_id


def test_the_watch_finds_planted_residue_and_files_its_follow_up(
        s3_endpoint: str, bucket: str, tmp_path: Path, write_map: Callable[[str], Path],
        make_lethe: Callable[..., Lethe]) -> None:
    put_objects(s3_endpoint, bucket, [f"users/{u}/p.jpg" for u in ("12", "123", "1234", "7")])
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{OPERATOR_TOKEN} operator oscar\n")
    lethe = make_lethe(data_map=write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket)), api_tokens=tokens)
    watch = Watch(lethe, items=2)  # users/12, users/123 | users/1234, users/7 | from the start again
    with lethe.embedded_worker():
        erased = erase(lethe, "7")
        put_objects(s3_endpoint, bucket, ["users/7/again.jpg", "users/99/new.jpg"])  # residue; never erased
        first = watch.run()["photos"]
        assert (first.scanned, first.tombstoned, first.filed) == (2, 0, 0)  # the window holds 12 and 123
        second = watch.run()["photos"]
        assert (second.tombstoned, second.filed) == (1, 1)
        (follow_up,) = second.requests
        assert lethe.wait(follow_up, timeout=60)["status"] == "completed"
        assert lethe.ledger.audit_trail(follow_up)[0]["detail"]["follow_up_of"] == erased
        owners = versions_per_owner(s3_endpoint, bucket)
        assert owners["7"] == 0 and all(owners[u] == 1 for u in ("12", "123", "1234", "99"))

        third = watch.run()["photos"]  # back at the start: nothing erased is there
        assert third.filed == 0
        put_objects(s3_endpoint, bucket, ["users/7/third.jpg"])  # back again after the follow-up completed
        found = [watch.run()["photos"].filed for _ in range(3)]
        assert sum(found) == 1  # a new follow-up: it follows the last one, not the first erasure
    with TestClient(create_app(lethe)) as client:
        text = client.get("/metrics").text
        form = client.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        client.post("/login", data={"token": OPERATOR_TOKEN, "csrf": csrf.group(1), "next": "/"})
        overview = client.get("/overview").text
    assert 'lethe_resurrections_total{target="photos"} 2.0' in text
    assert re.search(r'id="resurrections".*?<td>photos</td><td class="num">2</td>', overview, re.DOTALL)
    assert "sessions" not in [line for line in text.splitlines() if line.startswith("lethe_resurrections")]


@pytest.fixture
def evented(s3_endpoint: str, bucket: str, pg_database: str, redis_broker: str, write_map: Callable[[str], Path],
            make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    """A Lethe on Redis + PostgreSQL with a worker (purge and control queues) and the intake running."""
    instance = make_lethe(database_url=pg_database, broker_url=redis_broker, event_key=KEY.decode(),
                          data_map=write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket)))
    with Connection(redis_broker) as conn:
        declare(conn)
        DEAD_QUEUE(conn.default_channel).purge()
    with instance.embedded_worker(), running_intake(instance, redis_broker):
        yield instance


def test_a_restored_event_files_the_follow_ups_a_replay_would(evented: Lethe, s3_endpoint: str, bucket: str,
                                                              redis_broker: str) -> None:
    put_objects(s3_endpoint, bucket, [f"users/{u}/p.jpg" for u in ("12", "123", "7")])
    taken = datetime.now(UTC)
    erased = erase(evented, "12")
    put_objects(s3_endpoint, bucket, ["users/12/p.jpg"])  # the restore brings it back
    publish_store_restored(redis_broker, "photos", taken, source="backup-service", key=KEY, event_id="r-1")
    follow_up = wait_for(lambda: [r for r in request_ids(evented) if r != erased], timeout=60)[0]
    assert evented.wait(follow_up, timeout=60)["status"] == "completed"
    trail = evented.ledger.audit_trail(follow_up)
    assert trail[0]["detail"]["follow_up_of"] == erased and trail[0]["actor"] == "event:backup-service"
    owners = versions_per_owner(s3_endpoint, bucket)
    assert owners["12"] == 0 and owners["123"] == 1 and owners["7"] == 1

    for data in ({"target": "nope", "restored_from": taken.isoformat()},
                 {"target": "photos", "restored_from": "last tuesday"},
                 {"target": "photos"}):
        with Connection(redis_broker) as conn:
            publish(conn, make_event(STORE_RESTORED, data, source="backup-service", key=KEY))
    dead = drain_dead(redis_broker, 3)
    assert [reason for _, reason in dead] == ["malformed"] * 3
    assert json.loads(dead[0][0])["data"]["target"] == "nope"  # dead-lettered with its body unchanged
    assert len(request_ids(evented)) == 2


def test_lethe_reconcile_runs_the_watch(s3_endpoint: str, bucket: str, tmp_path: Path,
                                        write_map: Callable[[str], Path], signing_key_file: Path) -> None:
    """As an operator runs it: one pass files the follow-up for planted residue and says so; the next pass,
    with that follow-up still open, files nothing; without a data map reconcile still does its own work."""
    lethe_cli = str(Path(sys.executable).with_name("lethe"))
    put_objects(s3_endpoint, bucket, [f"users/{u}/p.jpg" for u in ("12", "123")])
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}, **FAKE_AWS_ENV,
           "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'lethe.db'}", "LETHE_SUBJECT_KEY": SUBJECT_KEY,
           "LETHE_SIGNING_KEY": str(signing_key_file),
           "LETHE_DATA_MAP": str(write_map(MAP.format(endpoint=s3_endpoint, bucket=bucket)))}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([lethe_cli, *args], env={**env, **extra}, capture_output=True, text=True, timeout=120)

    assert run("submit", "--subject", "user_id=12", "--wait").returncode == 0
    put_objects(s3_endpoint, bucket, ["users/12/back.jpg"])
    first = run("reconcile")
    assert first.returncode == 0, first.stderr
    assert "filed 1 follow-up(s) for erased data found again" in first.stdout
    again = run("reconcile")
    assert again.returncode == 0 and "follow-up" not in again.stdout
    no_map = run("reconcile", LETHE_DATA_MAP=str(tmp_path / "missing.yaml"))
    assert no_map.returncode == 0 and "re-dispatched" in no_map.stdout
    assert versions_per_owner(s3_endpoint, bucket)["123"] == 1
