"""Signed platform events through the real broker (Redis and RabbitMQ): intake, dead letters, outbound."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport.redis import Channel as RedisChannel
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from orchestrator.certificates import canonical_json
from orchestrator.events import (
    DEAD_QUEUE,
    ERASURE_REQUESTED,
    EXCHANGE,
    check,
    idempotency_key,
    intake_queue,
    make_event,
    publish,
    publish_data_written,
    publish_erasure_request,
    publish_outbox,
    sign,
    signature,
    verify_outbound,
)
from orchestrator.intake import handle
from orchestrator.ledger import Ledger
from orchestrator.ledger.models import OutboxEvent, Request
from orchestrator.service import Lethe
from tests.fixtures.events import KEY, drain_dead, request_count, request_ids, running_intake, send, wait_for
from workers.targets.memory import MemoryStore

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: {user_id: "[0-9]+"}
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
  - {name: features, kind: memory, store: features, match: {owner: "{user_id}"}, after: [photos]}
"""


@pytest.fixture
def lethe(broker: str, pg_database: str, write_map: Callable[[str], Path],
          make_lethe: Callable[..., Lethe]) -> Iterator[Lethe]:
    """A Lethe on the broker and PostgreSQL, with an in-process worker and event intake running."""
    path = write_map(MAP)
    instance = make_lethe(database_url=pg_database, broker_url=broker, data_map=path, event_key=KEY.decode())
    for owner in ("12", "123", "77"):
        MemoryStore.add("photos", {"owner": owner}, {"owner": owner})
        MemoryStore.add("features", {"owner": owner})
    with instance.embedded_worker(), running_intake(instance, broker):
        yield instance


def test_signed_event_files_a_request_that_completes(lethe: Lethe, broker: str) -> None:
    """A signed lethe.erasure.requested event becomes a completed request that erased only its subject."""
    publish_erasure_request(broker, {"user_id": "12"}, source="account-service", key=KEY)
    request_id = wait_for(lambda: request_ids(lethe))[0]
    assert lethe.wait(request_id, timeout=30)["status"] == "completed"
    assert sorted(r["owner"] for r in MemoryStore.records("photos")) == ["123", "123", "77", "77"]
    trail = lethe.ledger.audit_trail(request_id)
    assert trail[0]["actor"] == "event:account-service"


def test_redelivered_event_makes_one_request(lethe: Lethe, broker: str) -> None:
    """The same event delivered twice, once processed by a consumer that died before its ack: one request."""
    event = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "77"}}, source="support-tool", key=KEY)
    handle(lethe, check(json.dumps(event).encode(), KEY))  # processed, then the consumer died: never acked
    with Connection(broker) as conn:
        publish(conn, event)
        publish(conn, event)
    time.sleep(2)
    ids = request_ids(lethe)
    assert len(ids) == 1
    assert lethe.wait(ids[0], timeout=30)["status"] == "completed"


def test_bad_events_go_to_the_dead_queue_with_their_reason(lethe: Lethe, broker: str) -> None:
    """Unsigned, forged, malformed, unknown, hostile and oversize events are dead-lettered unchanged."""
    good = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "12"}}, source="svc", key=KEY)
    unsigned = {k: v for k, v in good.items() if k != "signature"}
    forged = {**good, "data": {"subject": {"user_id": "123"}}}  # signature of another body
    other_key = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "12"}}, source="svc", key=b"wrong")
    no_data = sign({k: v for k, v in good.items() if k not in ("signature", "data")}, KEY)
    unknown = make_event("lethe.erasure.requested.v2", {"subject": {"user_id": "12"}}, source="svc", key=KEY)
    hostile = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "*"}}, source="svc", key=KEY)
    traversal = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "../123"}}, source="svc", key=KEY)
    bodies = {
        "unsigned": json.dumps(unsigned).encode(),
        "bad-signature": json.dumps(forged).encode(),
        "bad-signature-key": json.dumps(other_key).encode(),
        "malformed": b"{not json",
        "malformed-shape": json.dumps(no_data).encode(),
        "unknown-type": json.dumps(unknown).encode(),
        "bad-subject": json.dumps(hostile).encode(),
        "bad-subject-2": json.dumps(traversal).encode(),
        "oversize": json.dumps({**good, "padding": "x" * 70_000}).encode(),
    }
    send(broker, list(bodies.values()))  # all on the routing key the intake consumes
    got = drain_dead(broker, len(bodies))
    expected = {body: label.split("-key")[0].removesuffix("-shape").removesuffix("-2")
                for label, body in bodies.items()}
    assert sorted((body, reason) for body, reason in got) == sorted(expected.items())
    assert request_ids(lethe) == []
    assert lethe.ledger.dead_letter_counts() == {"unsigned": 1, "bad-signature": 2, "malformed": 2,
                                                 "unknown-type": 1, "bad-subject": 2, "oversize": 1}
    assert len(MemoryStore.records("photos")) == 6


def test_outbound_events_are_published_once_each(lethe: Lethe, broker: str) -> None:
    """Task and request completion are announced once each, signed, with hashes and never raw identifiers."""
    with Connection(broker) as conn:
        watch = Queue("test.watch.outbound", Exchange("lethe.events", type="topic", durable=True),
                      routing_key="lethe.erasure.#", durable=False, auto_delete=False)
        watch(conn.default_channel).declare()
        watch(conn.default_channel).purge()
        request_id, _ = lethe.submit({"user_id": "123"})
        assert lethe.wait(request_id, timeout=30)["status"] == "completed"
        lethe.publish_events()  # a second publish must not announce anything again
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(events) < 3 and time.monotonic() < deadline:
            message = watch(conn.default_channel).get(no_ack=True)
            if message is None:
                time.sleep(0.1)
                continue
            events.append(json.loads(message.body))
        time.sleep(0.5)
        assert watch(conn.default_channel).get(no_ack=True) is None
        watch(conn.default_channel).delete()
    assert sorted(e["type"] for e in events) == ["lethe.erasure.completed", "lethe.erasure.task_completed",
                                                 "lethe.erasure.task_completed"]
    assert len({e["id"] for e in events}) == 3
    for e in events:
        assert e["data"]["request_id"] == request_id
        assert "123" not in json.dumps(e["data"]["subject_hashes"])
        assert verify_outbound(e, [lethe.ledger.signing_key.public_key()])  # Ed25519, never the event key
        assert e["signature"] != signature(e, KEY)


def test_data_written_after_erasure_is_erased_again(lethe: Lethe, broker: str) -> None:
    """New data of an erased subject is erased by a follow-up request for that target; others are ignored."""
    request_id, _ = lethe.submit({"user_id": "12"})
    assert lethe.wait(request_id, timeout=30)["status"] == "completed"
    MemoryStore.add("features", {"owner": "12"})
    publish_data_written(broker, {"user_id": "12"}, "features", source="feature-pipeline", key=KEY)
    publish_data_written(broker, {"user_id": "77"}, "features", source="feature-pipeline", key=KEY)
    follow_up = wait_for(lambda: [i for i in request_ids(lethe) if i != request_id])
    assert len(follow_up) == 1
    status = lethe.wait(follow_up[0], timeout=30)
    assert status["status"] == "completed"
    assert [t["target"] for t in status["tasks"]] == ["features"]
    assert [r["owner"] for r in MemoryStore.records("features")] == ["123", "77"]
    received = lethe.ledger.audit_trail(follow_up[0])[0]
    assert received["detail"]["follow_up_of"] == request_id
    time.sleep(1)
    assert request_count(lethe) == 2


def test_one_batch_of_good_forged_and_duplicate_events(broker: str, pg_database: str, write_map: Callable[[str], Path],
                                                      make_lethe: Callable[..., Lethe],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Events already queued are taken as one batch: one ledger call per event source, one request per
    distinct good (source, id) - a redelivery, a copy in the same batch and a reused id with another subject
    make none - the forged and hostile ones are dead-lettered with their reason, and everything is acked."""
    instance = make_lethe(database_url=pg_database, broker_url=broker, data_map=write_map(MAP),
                          event_key=KEY.decode())
    for owner in ("12", "123", "77"):
        MemoryStore.add("photos", {"owner": owner}, {"owner": owner})
        MemoryStore.add("features", {"owner": owner})
    request = lambda user, source="svc", event_id=None: make_event(  # noqa: E731
        ERASURE_REQUESTED, {"subject": {"user_id": user}}, source=source, key=KEY, event_id=event_id)
    first, second = request("12", event_id="e-1"), request("77", event_id="e-2")
    same_id_other_subject = request("123", event_id="e-1")  # (svc, e-1) again: never a second request
    same_id_other_source = request("123", source="other-svc", event_id="e-1")  # a distinct (source, id)
    filed_before = request("77", event_id="e-3")
    handle(instance, check(json.dumps(filed_before).encode(), KEY))  # filed, then the consumer died: no ack
    forged = {**request("12", event_id="e-4"), "data": {"subject": {"user_id": "123"}}}
    unsigned = {k: v for k, v in request("77", event_id="e-5").items() if k != "signature"}
    hostile = request("*", event_id="e-6")
    good = [first, second, first, same_id_other_subject, filed_before, same_id_other_source, first]
    bad = {json.dumps(forged).encode(): "bad-signature", json.dumps(unsigned).encode(): "unsigned",
           json.dumps(hostile).encode(): "bad-subject"}
    send(broker, [*(json.dumps(e).encode() for e in good[:3]), *bad, *(json.dumps(e).encode() for e in good[3:])])
    calls: list[int] = []
    file_requests = instance.ledger.file_requests

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        return file_requests(*args, **kwargs)

    monkeypatch.setattr(instance.ledger, "file_requests", counted)
    with instance.embedded_worker(), running_intake(instance, broker, batch_window=2.0):
        got = drain_dead(broker, len(bad))
        assert sorted(got) == sorted(bad.items())
        wait_for(lambda: len(request_ids(instance)) == 4)
        for request_id in request_ids(instance):
            assert instance.wait(request_id, timeout=30)["status"] == "completed"  # dispatched
    assert sorted(calls) == [1, 3]  # (svc: e-1, e-2, e-3) and (other-svc: e-1), duplicates left out
    with instance.ledger.sessions() as s:
        keys = list(s.scalars(select(Request.idempotency_key)))
    assert sorted(keys) == sorted({idempotency_key(check(json.dumps(e).encode(), KEY)) for e in good})
    assert instance.ledger.dead_letter_counts() == {"bad-signature": 1, "unsigned": 1, "bad-subject": 1}
    assert sorted(r["owner"] for r in MemoryStore.records("photos")) == []
    with Connection(broker) as conn:  # nothing left unacknowledged: the closed consumer returned nothing
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 0
        assert DEAD_QUEUE(conn.default_channel).queue_declare().message_count == 0


def test_a_refused_event_costs_the_batch_nothing_and_a_lost_ledger_requeues_it(
        broker: str, pg_database: str, write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An idempotency conflict with an earlier request or a regime the ledger refuses sends the batch through
    one event at a time: the others are filed, the refused one is dead-lettered, the conflicting one makes no
    request. While the ledger is unreachable the batch is given back to the queue, then filed."""
    instance = make_lethe(database_url=pg_database, broker_url=broker, data_map=write_map(MAP),
                          event_key=KEY.decode())
    earlier = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "12"}}, source="svc", key=KEY, event_id="e-1")
    handle(instance, check(json.dumps(earlier).encode(), KEY))
    conflicting = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "77"}}, source="svc", key=KEY,
                             event_id="e-1")
    others = [make_event(ERASURE_REQUESTED, {"subject": {"user_id": user}}, source="svc", key=KEY)
              for user in ("77", "123")]
    refused = make_event(ERASURE_REQUESTED, {"subject": {"user_id": "77"}, "regime": "lgpd"}, source="svc", key=KEY)
    with Connection(broker) as conn:
        for event in (others[0], conflicting, refused, others[1]):
            publish(conn, event)
    calls: list[int] = []
    file_requests = instance.ledger.file_requests

    def unreachable_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        if len(calls) == 1:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("the ledger is down"))
        return file_requests(*args, **kwargs)

    monkeypatch.setattr(instance.ledger, "file_requests", unreachable_once)
    with running_intake(instance, broker, batch_window=0.5):
        assert drain_dead(broker, 1) == [(canonical_json(refused), "malformed")]
        wait_for(lambda: len(request_ids(instance)) == 3)
    with instance.ledger.sessions() as s:
        keys = list(s.scalars(select(Request.idempotency_key)))
    assert sorted(keys) == sorted(idempotency_key(check(json.dumps(e).encode(), KEY)) for e in [earlier, *others])
    assert calls[0] == 3  # the batch's svc/gdpr group (e-1, and the two others), requeued by the outage
    assert instance.ledger.dead_letter_counts() == {"malformed": 1}
    with Connection(broker) as conn:
        assert intake_queue()(conn.default_channel).queue_declare().message_count == 0


def test_outbound_events_need_no_event_key_and_cannot_be_replayed_as_requests(
        broker: str, pg_database: str, write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe]) -> None:
    """Without LETHE_EVENT_KEY lethe still signs what it publishes (Ed25519: the event key is not in the
    outbound path); fed back to an intake, lethe's own event is refused (bad-signature), never filed."""
    instance = make_lethe(database_url=pg_database, broker_url=broker, data_map=write_map(MAP), event_key=None)
    MemoryStore.add("photos", {"owner": "12"})
    with Connection(broker) as conn:
        watch = Queue("test.watch.unkeyed", EXCHANGE, routing_key="lethe.erasure.completed", durable=False)
        watch(conn.default_channel).declare()
        watch(conn.default_channel).purge()
        with instance.embedded_worker():
            request_id, _ = instance.submit({"user_id": "12"})
            assert instance.wait(request_id, timeout=30)["status"] == "completed"
        message = wait_for(lambda: watch(conn.default_channel).get(no_ack=True))
        watch(conn.default_channel).delete()
    event = json.loads(message.body)
    assert verify_outbound(event, [instance.ledger.signing_key.public_key()])
    send(broker, [message.body])  # replayed as a request, on the intake's routing key
    with running_intake(instance, broker):
        assert drain_dead(broker, 1) == [(message.body, "bad-signature")]
    assert request_ids(instance) == [request_id]


def test_a_batch_of_events_reads_the_exchange_bindings_once(pg_ledger: Ledger, broker: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """30 pending events are all delivered to a bound queue, and on Redis the exchange's bindings are read
    from the broker once for the batch, not once per event (kombu's default: 30 reads)."""
    reads: list[str] = []
    read = RedisChannel.get_table
    monkeypatch.setattr(RedisChannel, "get_table", lambda channel, exchange: reads.append(exchange) or
                        read(channel, exchange))
    with pg_ledger.sessions.begin() as s:
        for n in range(30):
            event = {"specversion": "1.0", "id": f"e-{n}", "source": "lethe", "type": "lethe.erasure.completed",
                     "time": "2026-12-03T10:00:00Z", "datacontenttype": "application/json", "data": {"n": n}}
            s.add(OutboxEvent(event_id=f"e-{n}", type=event["type"], body=json.dumps(event),
                              created_at=datetime.now(UTC)))
    with Connection(broker) as conn:
        watch = Queue("test.watch.batch", Exchange("lethe.events", type="topic", durable=True),
                      routing_key="lethe.erasure.#", durable=False, auto_delete=False)
        watch(conn.default_channel).declare()
        watch(conn.default_channel).purge()
        with conn.Producer() as producer:
            assert publish_outbox(pg_ledger, producer) == 30
            assert "get_table" not in vars(producer.channel)  # the transport's own method again
        got = []
        while (message := watch(conn.default_channel).get(no_ack=True)) is not None:
            got.append(json.loads(message.body)["data"]["n"])
        watch(conn.default_channel).delete()
    assert sorted(got) == list(range(30))
    assert reads == ([] if broker.startswith("amqp") else ["lethe.events"])
