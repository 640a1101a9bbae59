"""Poison messages on the real broker (Redis): each is dead-lettered with its reason and body unchanged, and
the intake reads on - the good event behind them is filed."""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer
from sqlalchemy import select
from sqlalchemy.exc import DataError

from orchestrator.events import (
    CONTENT_TYPE,
    DATA_WRITTEN,
    DEAD_QUEUE,
    ERASURE_REQUESTED,
    EXCHANGE,
    declare,
    intake_queue,
    make_event,
)
from orchestrator.ledger.models import Request
from orchestrator.service import Lethe
from tests.chaos.poison import poison_messages, signed_raw, unsigned_request
from tests.fixtures.events import KEY, drain_dead, request_count, running_intake, send
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {user_id: "[0-9]+"}
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
"""


def an_event(subject: dict[str, Any]) -> dict[str, Any]:
    return unsigned_request(subject, KEY)


@pytest.fixture
def lethe(redis_broker: str, pg_database: str, write_map: Callable[[str], Path],
          make_lethe: Callable[..., Lethe]) -> Lethe:
    instance = make_lethe(database_url=pg_database, broker_url=redis_broker, data_map=write_map(MAP),
                          event_key=KEY.decode())
    with Connection(redis_broker) as conn:
        declare(conn)
    MemoryStore.add("photos", {"owner": "12"}, {"owner": "77"})
    return instance


def test_poison_messages_are_dead_lettered_and_the_good_event_behind_them_is_filed(
        lethe: Lethe, redis_broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Surrogates, 40 KB of '[', bytes that are not UTF-8, no time, a stale time, and an event a bug fails
    on: each is dead-lettered unchanged with its reason; the good event after them completes."""
    bodies = poison_messages(KEY, user="12")
    buggy = make_event(DATA_WRITTEN, {"subject": {"user_id": "77"}, "target": "photos"}, source="svc", key=KEY)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug in lethe on this one message")

    monkeypatch.setattr(lethe.ledger, "tombstones_of", broken)
    bodies[json.dumps(buggy).encode()] = "malformed"
    good = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "12"}}, source="svc", key=KEY)
    send(redis_broker, [*bodies, json.dumps(good).encode()])
    with lethe.embedded_worker(), running_intake(lethe, redis_broker) as thread:
        got = drain_dead(redis_broker, len(bodies))
        deadline = time.monotonic() + 30
        while request_count(lethe) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert thread.is_alive()  # nothing stopped the intake
        with lethe.ledger.sessions() as s:
            (request_id,) = s.scalars(select(Request.id))
        assert lethe.wait(request_id, timeout=30)["status"] == "completed"
    assert sorted(got) == sorted(bodies.items())  # body unchanged, reason as the SPEC names it
    assert [r["owner"] for r in MemoryStore.records("photos")] == ["77"]
    assert lethe.ledger.dead_letter_counts() == Counter(bodies.values())
    with Connection(redis_broker) as conn:
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 0


hostile_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12)
bodies = st.one_of(
    st.binary(max_size=300),
    hostile_json.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda s, extra: signed_raw({**an_event(s), **extra}, KEY),
              st.dictionaries(st.sampled_from(["user_id", "x"]),
                              st.sampled_from(["12", "*", "\ud800", "77"]) | st.text(), max_size=2),
              st.dictionaries(st.sampled_from(["time", "type", "specversion", "x"]), hostile_json, max_size=2)),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"{" * n),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(bodies, min_size=1, max_size=8))
def test_any_batch_is_filed_or_dead_lettered_on_the_real_broker(lethe: Lethe, redis_broker: str, batch: list[bytes],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Every message the consumer reads is settled - dead-lettered, or acknowledged as filed, duplicate or
    ignored (one intake.event line) - none is left on the queue, and the consumer lives."""
    caplog.set_level("INFO")
    caplog.clear()
    with Connection(redis_broker) as conn:
        for queue in (intake_queue(), DEAD_QUEUE):
            queue(conn.default_channel).purge()

    def settled() -> tuple[int, int]:
        accepted = sum(1 for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "intake.event")
        with Connection(redis_broker) as conn:
            return accepted, DEAD_QUEUE(conn.default_channel).queue_declare().message_count

    send(redis_broker, batch)
    with running_intake(lethe, redis_broker) as thread:
        deadline = time.monotonic() + 20
        while sum(settled()) < len(batch) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.is_alive()
    assert sum(settled()) == len(batch)
    with Connection(redis_broker) as conn:  # the consumer closed: anything unacknowledged would be back
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 0


def test_a_ledger_refusing_one_event_dead_letters_it_and_files_the_rest(
        lethe: Lethe, redis_broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DataError is the message's data, not an outage: requeueing it would retry it for ever and hold its
    batch back. It is dead-lettered; the batch's other events are filed. (An outage requeues: see
    test_events.py.)"""
    file_requests = lethe.ledger.file_requests

    def refusing(datamap: Any, filings: list[Any], **kwargs: Any) -> Any:
        if any(dict(f.subject).get("user_id") == "666" for f in filings):
            raise DataError("INSERT", {}, ValueError("a value the database cannot store"))
        return file_requests(datamap, filings, **kwargs)

    monkeypatch.setattr(lethe.ledger, "file_requests", refusing)
    events = [make_event(ERASURE_REQUESTED, {"subject": {"user_id": u}}, source="svc", key=KEY)
              for u in ("12", "666", "77")]
    send(redis_broker, [json.dumps(e).encode() for e in events])
    with running_intake(lethe, redis_broker):
        got = drain_dead(redis_broker, 1)
        deadline = time.monotonic() + 20
        while request_count(lethe) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert got == [(json.dumps(events[1]).encode(), "malformed")]
    assert request_count(lethe) == 2
    with Connection(redis_broker) as conn:
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 0


def test_a_compressed_body_is_never_inflated(lethe: Lethe, redis_broker: str) -> None:
    """A zlib bomb (20 MB of zeros in ~20 KB, with kombu's compression header) is dead-lettered as sent,
    never inflated; so is a body naming a compression kombu does not know (kombu alone would drop it);
    the event behind them is filed."""
    bomb = zlib.compress(b"0" * 20_000_000)
    good = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "12"}}, source="svc", key=KEY)
    with Connection(redis_broker) as conn:
        producer = Producer(conn.default_channel)
        for body, headers in ((bomb, {"compression": "application/x-gzip"}), (b"{}", {"compression": "x-unknown"}),
                              (json.dumps(good).encode(), {})):
            producer.publish(body, exchange=EXCHANGE, routing_key=ERASURE_REQUESTED, content_type=CONTENT_TYPE,
                             content_encoding="binary", headers=headers)
    with running_intake(lethe, redis_broker):
        got = drain_dead(redis_broker, 2)
        deadline = time.monotonic() + 20
        while request_count(lethe) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert sorted(got) == sorted([(bomb, "malformed"), (b"{}", "unsigned")])
    assert request_count(lethe) == 1


def test_bytes_without_kombus_envelope_do_not_stop_the_intake(lethe: Lethe, redis_broker: str) -> None:
    """Garbage pushed straight onto the intake's Redis list fails kombu's own parsing; the intake lives and
    files the event behind it."""
    client = redis.Redis.from_url(redis_broker)
    client.lpush("lethe.intake", b"not a kombu envelope", b'{"body": 1}')
    client.close()
    send(redis_broker, [json.dumps(make_event(ERASURE_REQUESTED, {"subject": {"user_id": "12"}}, source="svc",
                                              key=KEY)).encode()])
    with running_intake(lethe, redis_broker) as thread:
        deadline = time.monotonic() + 20
        while request_count(lethe) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert thread.is_alive()
    assert request_count(lethe) == 1
