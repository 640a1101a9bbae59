"""Dead letters an operator can act on, on the real brokers (Redis and RabbitMQ): listed without the bodies'
identifiers, bodies kept unchanged, one replayed after a fix - still checked, still deduplicated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection

from orchestrator import deadletters
from orchestrator.deadletters import DeadLetterNotFound, list_dead_letters, replay, resolve
from orchestrator.events import (
    DEAD_QUEUE,
    ERASURE_REQUESTED,
    intake_queue,
    make_event,
    request_for_event,
)
from orchestrator.service import Lethe
from tests.fixtures.events import KEY, request_count, running_intake, send, wait_for
from tests.fixtures.lethe import SUBJECT_KEY

pytestmark = pytest.mark.integration

LETHE = str(Path(sys.executable).parent / "lethe")
MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"{email}}}
targets:
  - {{name: photos, kind: memory, store: photos, match: {{owner: "{{user_id}}"}}}}
"""


@pytest.fixture
def lethe(broker: str, pg_database: str, write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe]) -> Lethe:
    return make_lethe(database_url=pg_database, broker_url=broker, data_map=write_map(MAP.format(email="")),
                      event_key=KEY.decode())


def listed(broker: str) -> list[deadletters.DeadLetter]:
    with Connection(broker) as conn:
        return list_dead_letters(conn)


def dead_bodies(broker: str) -> list[bytes]:
    """The dead queue's bodies, read and put back (through the listing walk)."""
    with Connection(broker) as conn:
        queue = DEAD_QUEUE(conn.default_channel)
        messages = [queue.get(no_ack=False) for _ in range(queue.queue_declare().message_count)]
        for message in messages:
            message.requeue()
        return [message.body for message in messages]


def dead_count(broker: str) -> int:
    with Connection(broker) as conn:
        return int(DEAD_QUEUE(conn.default_channel).queue_declare().message_count)


def test_list_shows_reason_time_type_and_source_never_identifiers(lethe: Lethe, broker: str) -> None:
    forged = {**make_event(ERASURE_REQUESTED, {"subject": {"user_id": "4242"}}, source="crm-4242", key=b"wrong",
                           event_id="evt-4242")}
    unknown_kind = make_event(ERASURE_REQUESTED, {"subject": {"email": "ann@example.com"}}, source="crm", key=KEY,
                              event_id="evt-2")
    bodies = [json.dumps(forged).encode(), json.dumps(unknown_kind).encode(), b"\xff not even UTF-8"]
    send(broker, bodies)
    with running_intake(lethe, broker):
        wait_for(lambda: dead_count(broker) == 3)
    entries = listed(broker)
    assert [e.reason for e in entries] == ["bad-signature", "bad-subject", "malformed"]
    assert [(e.type, e.source, e.event_id) for e in entries] == [
        (ERASURE_REQUESTED, "crm-[redacted]", "evt-[redacted]"), (ERASURE_REQUESTED, "crm", "evt-2"),
        (None, None, None)]
    assert all(e.dead_lettered_at and e.dead_lettered_at.endswith("Z") for e in entries)
    shown = json.dumps([e.as_dict() for e in entries])
    assert "4242" not in shown and "ann@example.com" not in shown
    assert [e.id for e in listed(broker)] == [e.id for e in entries]  # listing again: same ids, same order
    assert sorted(dead_bodies(broker)) == sorted(bodies)  # bodies unchanged, none lost by the walks
    assert request_count(lethe) == 0


def test_replay_after_a_fix_files_the_event_once(lethe: Lethe, broker: str, write_map: Callable[[str], Path],
                                                 make_lethe: Callable[..., Lethe], pg_database: str) -> None:
    """An event for an identifier kind the map lacked is dead-lettered; the map is fixed; its replay files it.
    Replayed again (a copy), it is deduplicated: still one request. A forged one replayed is refused again."""
    early = make_event(ERASURE_REQUESTED, {"subject": {"email": "ann@example.com"}}, source="crm", key=KEY,
                       event_id="evt-1")
    forged = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "12"}}, source="crm", key=b"wrong")
    send(broker, [json.dumps(early).encode(), json.dumps(forged).encode()])
    with running_intake(lethe, broker):
        wait_for(lambda: dead_count(broker) == 2)
    before = {e.reason: e for e in listed(broker)}
    assert set(before) == {"bad-subject", "bad-signature"}

    fixed = make_lethe(database_url=pg_database, broker_url=broker, data_map=write_map(
        MAP.format(email=', email: "[^@]+@[^@]+"')), event_key=KEY.decode())  # the fix: the map declares email
    with Connection(broker) as conn:
        replay(conn, before["bad-subject"].id[:8])  # a unique prefix is enough
        deadletters.dead_letter(conn, json.dumps(early).encode(), "malformed")  # a second copy of it
        copy = next(e for e in list_dead_letters(conn) if e.id not in {x.id for x in before.values()})
        replay(conn, copy.id)
        replay(conn, before["bad-signature"].id)
    with fixed.embedded_worker(), running_intake(fixed, broker):
        request_id = wait_for(lambda: request_for_event(fixed.ledger, "crm", "evt-1"))
        assert fixed.wait(request_id, timeout=30)["status"] == "completed"
        again = wait_for(lambda: [e for e in listed(broker) if e.replay_of])
    assert request_count(fixed) == 1  # the copy was deduplicated
    assert [(e.reason, e.replay_of) for e in again] == [("bad-signature", before["bad-signature"].id)]
    assert [e.id for e in listed(broker)] == [again[0].id]  # the replayed ones left the dead queue


def test_replay_of_an_unknown_or_ambiguous_id_is_refused(lethe: Lethe, broker: str) -> None:
    with Connection(broker) as conn, pytest.raises(DeadLetterNotFound, match="no dead letter"):
        replay(conn, "nope")
    entries = [deadletters.DeadLetter(id=i, reason="malformed", dead_lettered_at=None, type=None, source=None,
                                      event_id=None) for i in ("ab12", "ab34")]
    with pytest.raises(DeadLetterNotFound, match="2 dead letters"):
        resolve(entries, "ab")
    assert resolve(entries, "ab3").id == "ab34"


def test_cli_lists_and_replays(lethe: Lethe, broker: str, pg_database: str, tmp_path: Path) -> None:
    """`lethe dead-letters list --json` and `replay ID` as an operator runs them; an unknown id is exit 2."""
    forged = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "4242"}}, source="crm", key=b"wrong")
    with Connection(broker) as conn:
        dead_id = deadletters.dead_letter(conn, json.dumps(forged).encode(), "bad-signature")
    env = {**os.environ, "LETHE_BROKER_URL": broker, "LETHE_DATABASE_URL": pg_database,
           "LETHE_SUBJECT_KEY": SUBJECT_KEY, "LETHE_SIGNING_KEY": str(lethe.settings.signing_key),
           "LETHE_DATA_MAP": str(lethe.settings.data_map)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LETHE, "dead-letters", *args], env=env, capture_output=True, text=True, timeout=60)

    shown = run("list", "--json")
    assert shown.returncode == 0, shown.stderr
    (item,) = json.loads(shown.stdout)["items"]
    assert (item["id"], item["reason"], item["source"]) == (dead_id, "bad-signature", "crm")
    assert "4242" not in shown.stdout
    table = run("list")
    assert table.returncode == 0 and dead_id in table.stdout and "4242" not in table.stdout
    missing = run("replay", "not-an-id")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    replayed = run("replay", dead_id[:6])
    assert replayed.returncode == 0, replayed.stderr
    assert dead_id in replayed.stdout
    with Connection(broker) as conn:
        assert DEAD_QUEUE(conn.default_channel).queue_declare().message_count == 0
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 1
