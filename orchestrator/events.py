"""Platform events in and out (SPEC "Events"): signed CloudEvents on the durable topic exchange lethe.events.

In: ``lethe.erasure.requested`` files a request; ``lethe.subject.data_written`` files a follow-up erasure
of one target for a subject erased within the tombstone period. Every event is checked (size, JSON,
HMAC-SHA256 signature in constant time, CloudEvents shape, type, identifiers) before it can touch the
ledger; a bad one goes to the queue ``lethe.events.dead`` with its body unchanged and the header
``x-lethe-reason``, and is acknowledged, so it is neither lost nor retried in a loop.

A redelivered event (the consumer died between filing and ack) is filed with an idempotency key derived
from (source, id), so it returns the request it already made instead of making a second one.

Out: the ledger's outbox (``lethe.erasure.task_completed``, ``.completed``, ``.failed``) is published here,
signed with the same key when one is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kombu import Connection, Exchange, Message, Producer, Queue
from kombu.common import maybe_declare
from kombu.mixins import ConsumerMixin
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import DBAPIError

from orchestrator.certificates import canonical_json
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.ledger.store import IdempotencyConflict
from orchestrator.logs import get_logger

if TYPE_CHECKING:
    from orchestrator.service import Lethe

log = get_logger("lethe.intake")

EXCHANGE = Exchange("lethe.events", type="topic", durable=True)
ERASURE_REQUESTED = "lethe.erasure.requested"
DATA_WRITTEN = "lethe.subject.data_written"
CONSUMED_TYPES = (ERASURE_REQUESTED, DATA_WRITTEN)
DEAD_EXCHANGE = Exchange("lethe.events.dead", type="direct", durable=True)
DEAD_QUEUE = Queue("lethe.events.dead", DEAD_EXCHANGE, routing_key="lethe.events.dead", durable=True)
CONTENT_TYPE = "application/cloudevents+json"
MAX_EVENT_BYTES = 64 * 1024
REASONS = ("unsigned", "bad-signature", "malformed", "unknown-type", "bad-subject", "oversize")


def intake_queue() -> Queue:
    """The durable intake queue, bound to every type lethe consumes."""
    from kombu import binding

    return Queue("lethe.intake", exchange=EXCHANGE, durable=True,
                 bindings=[binding(EXCHANGE, routing_key=t) for t in CONSUMED_TYPES])


def declare(connection: Connection) -> None:
    """Declare the exchanges and the intake and dead-letter queues, so events published while no consumer
    runs wait in ``lethe.intake``."""
    channel = connection.default_channel
    for entity in (EXCHANGE, DEAD_EXCHANGE, intake_queue(), DEAD_QUEUE):
        entity(channel).declare()


# -- signing ---------------------------------------------------------------------------------------------
def signature(event: Mapping[str, Any], key: bytes) -> str:
    """hex HMAC-SHA256 over the canonical JSON of the event without its ``signature`` attribute."""
    body = {k: v for k, v in event.items() if k != "signature"}
    return hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()


def sign(event: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    return {**event, "signature": signature(event, key)}


def make_event(event_type: str, data: Mapping[str, Any], *, source: str, key: bytes,
               event_id: str | None = None) -> dict[str, Any]:
    """A signed CloudEvent 1.0."""
    return sign({"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": source, "type": event_type,
                 "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                 "datacontenttype": "application/json", "data": dict(data)}, key)


def publish(connection: Connection, event: Mapping[str, Any]) -> None:
    """Publish a CloudEvent (structured JSON) to lethe.events with its type as routing key."""
    producer = Producer(connection.default_channel)
    producer.publish(canonical_json(event), exchange=EXCHANGE, routing_key=event["type"], content_type=CONTENT_TYPE,
                     content_encoding="binary", delivery_mode=2, declare=[EXCHANGE], retry=True)


def publish_erasure_request(broker_url: str, subject: Mapping[str, str], *, source: str, key: bytes,
                            event_id: str | None = None) -> str:
    """For platform services: ask lethe to erase a subject. Returns the event id (keep it: a retry with the
    same id never makes a second request)."""
    event = make_event(ERASURE_REQUESTED, {"subject": dict(subject)}, source=source, key=key, event_id=event_id)
    with Connection(broker_url) as conn:
        publish(conn, event)
    return str(event["id"])


def publish_data_written(broker_url: str, subject: Mapping[str, str], target: str, *, source: str,
                         key: bytes, event_id: str | None = None) -> str:
    """For platform services: new data of ``subject`` was written to ``target`` (a data-map target name)."""
    event = make_event(DATA_WRITTEN, {"subject": dict(subject), "target": target}, source=source, key=key,
                       event_id=event_id)
    with Connection(broker_url) as conn:
        publish(conn, event)
    return str(event["id"])


# -- intake ----------------------------------------------------------------------------------------------
class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow")  # CloudEvents extension attributes are allowed

    specversion: str = Field(pattern=r"^1\.0$")
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(min_length=1, max_length=256)
    signature: str = Field(pattern=r"^[0-9a-f]{64}$")
    data: dict[str, Any]


class ErasureRequestedData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: dict[str, Any] = Field(min_length=1)
    dry_run: bool = False
    regime: str = "gdpr"


class DataWrittenData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: dict[str, Any] = Field(min_length=1)
    target: str = Field(min_length=1, max_length=64)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Outcome:
    action: str  # "filed", "duplicate", "ignored"
    request_id: str | None = None


def check(body: bytes, key: bytes) -> CloudEvent:
    """Parse and authenticate an incoming event, or raise Rejected with the dead-letter reason."""
    if len(body) > MAX_EVENT_BYTES:
        raise Rejected("oversize", f"{len(body)} bytes > {MAX_EVENT_BYTES}")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("malformed", "not JSON") from None
    if not isinstance(raw, dict):
        raise Rejected("malformed", "not a JSON object")
    given = raw.get("signature")
    if not given:
        raise Rejected("unsigned")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), signature(raw, key).encode()):
        raise Rejected("bad-signature")
    try:
        event = CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise Rejected("malformed", f"{len(exc.errors())} invalid CloudEvent attribute(s)") from None
    if event.type not in CONSUMED_TYPES:
        raise Rejected("unknown-type", event.type[:64])
    return event


def idempotency_key(event: CloudEvent) -> str:
    """Deduplication on (source, id): the same pair always maps to the same key."""
    return "event:" + hashlib.sha256(f"{event.source}\0{event.id}".encode()).hexdigest()


def handle(lethe: Lethe, event: CloudEvent) -> Outcome:
    """File what an authenticated event asks for. Raises Rejected for bad data."""
    actor = f"event:{event.source[:180]}"
    datamap = lethe.load_map()
    try:
        if event.type == ERASURE_REQUESTED:
            data = ErasureRequestedData.model_validate(event.data)
            subject = datamap.parse_subject(data.subject)
            request_id, created = lethe.submit(dict(subject), dry_run=data.dry_run, regime=data.regime, actor=actor,
                                               idempotency_key=idempotency_key(event), datamap=datamap)
            return Outcome("filed" if created else "duplicate", request_id)
        written = DataWrittenData.model_validate(event.data)
        subject = datamap.parse_subject(written.subject)
        if written.target not in {t.name for t in datamap.targets}:
            raise Rejected("malformed", "data.target names no target of the data map")
        erased_by = lethe.ledger.erased_recently(subject.hashes(lethe.settings.subject_key_bytes).values(),
                                                 lethe.settings.tombstone_days)
        if erased_by is None:
            return Outcome("ignored")  # not an erased subject: nothing to do
        request_id, created = lethe.submit(
            dict(subject), actor=actor, idempotency_key=idempotency_key(event), datamap=datamap,
            only_targets=[written.target],
            origin={"follow_up_of": erased_by, "reason": f"data written to {written.target} after erasure"})
        return Outcome("filed" if created else "duplicate", request_id)
    except ValidationError as exc:
        raise Rejected("malformed", f"{len(exc.errors())} invalid data field(s)") from None
    except InvalidIdentifier as exc:
        raise Rejected("bad-subject", str(exc)) from None
    except IdempotencyConflict:
        return Outcome("duplicate")  # same (source, id) with another body: never a second request


class Intake(ConsumerMixin):
    """The `lethe intake` consumer. Acks only after the event was filed or dead-lettered."""

    def __init__(self, lethe: Lethe, connection: Connection, key: bytes):
        self.lethe = lethe
        self.connection = connection
        self.key = key

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
        # on_message gets the raw message: kombu must not try to decode application/cloudevents+json.
        return [consumer_cls(queues=[intake_queue()], on_message=self.on_message, prefetch_count=10)]

    def on_connection_revived(self) -> None:
        declare(self.connection)

    def on_message(self, message: Message) -> None:
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            event = check(body, self.key)
            outcome = handle(self.lethe, event)
        except Rejected as rejected:
            self.dead_letter(body, rejected, message)
            return
        except DBAPIError as exc:  # the ledger is unreachable: give the event back, try again shortly
            log.warning("intake.ledger_unavailable", error=type(exc).__name__)
            time.sleep(1.0)
            message.requeue()
            return
        log.info("intake.event", outcome=outcome.action, request_id=outcome.request_id, type=event.type)
        message.ack()

    def dead_letter(self, body: bytes, rejected: Rejected, message: Message) -> None:
        producer = Producer(self.connection.default_channel)
        producer.publish(body, exchange=DEAD_EXCHANGE, routing_key=DEAD_QUEUE.routing_key,
                         content_type=message.content_type or CONTENT_TYPE, content_encoding="binary",
                         headers={"x-lethe-reason": rejected.reason}, delivery_mode=2,
                         declare=[DEAD_EXCHANGE, DEAD_QUEUE], retry=True)
        self.lethe.ledger.count_dead_letter(rejected.reason)
        log.warning("intake.dead_lettered", reason=rejected.reason, detail=rejected.detail)
        message.ack()


def publish_outbox(lethe: Lethe, producer: Producer, key: bytes | None) -> int:
    """Publish the ledger's pending outbound events; signed when an event key is configured. A broker error
    leaves the rest in the outbox (consumers deduplicate on the event id)."""
    maybe_declare(EXCHANGE, producer.channel)

    def send(_type: str, event: dict[str, Any]) -> None:
        event = sign(event, key) if key else event
        producer.publish(canonical_json(event), exchange=EXCHANGE, routing_key=event["type"],
                         content_type=CONTENT_TYPE, content_encoding="binary", delivery_mode=2)

    return lethe.ledger.publish_outbox(send)
