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
import itertools
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from kombu import Connection, Exchange, Message, Producer, Queue
from kombu.common import maybe_declare
from kombu.mixins import ConsumerMixin
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import DBAPIError

from orchestrator.certificates import canonical_json
from orchestrator.identifiers import InvalidIdentifier, Subject
from orchestrator.ledger.store import Filing, IdempotencyConflict, LedgerError
from orchestrator.logs import get_logger

if TYPE_CHECKING:
    from orchestrator.datamap import DataMap
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
    send_event(Producer(connection.default_channel), event, declare=[EXCHANGE], retry=True)


def send_event(producer: Producer, event: Mapping[str, Any], **options: Any) -> None:
    """One CloudEvent on lethe.events through ``producer`` (``options`` go to kombu's publish)."""
    producer.publish(canonical_json(event), exchange=EXCHANGE, routing_key=event["type"], content_type=CONTENT_TYPE,
                     content_encoding="binary", delivery_mode=2, **options)


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


class SubjectData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: dict[str, Any] = Field(min_length=1)


class ErasureRequestedData(SubjectData):
    dry_run: bool = False
    regime: str = "gdpr"


class DataWrittenData(SubjectData):
    target: str = Field(min_length=1, max_length=64)


D = TypeVar("D", bound=SubjectData)


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


def event_actor(event: CloudEvent) -> str:
    """Who an event's request is filed for, in the audit trail: its source."""
    return f"event:{event.source[:180]}"


def checked_data(event: CloudEvent, model: type[D], datamap: DataMap) -> tuple[D, Subject]:
    """An authenticated event's data and subject, checked against the data map. Raises Rejected."""
    try:
        data = model.model_validate(event.data)
        return data, datamap.parse_subject(data.subject)
    except ValidationError as exc:
        raise Rejected("malformed", f"{len(exc.errors())} invalid data field(s)") from None
    except InvalidIdentifier as exc:
        raise Rejected("bad-subject", str(exc)) from None


def handle(lethe: Lethe, event: CloudEvent) -> Outcome:
    """File what an authenticated event asks for. Raises Rejected for bad data."""
    actor = event_actor(event)
    datamap = lethe.load_map()
    try:
        if event.type == ERASURE_REQUESTED:
            data, subject = checked_data(event, ErasureRequestedData, datamap)
            request_id, created = lethe.submit(dict(subject), dry_run=data.dry_run, regime=data.regime, actor=actor,
                                               idempotency_key=idempotency_key(event), datamap=datamap)
            return Outcome("filed" if created else "duplicate", request_id)
        written, subject = checked_data(event, DataWrittenData, datamap)
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
    except IdempotencyConflict:
        return Outcome("duplicate")  # same (source, id) with another body: never a second request


@dataclass(frozen=True)
class _Requested:
    """A checked ``lethe.erasure.requested`` event of a batch, ready to file."""

    message: Message
    event: CloudEvent
    subject: Subject
    key: str


def _body(message: Message) -> bytes:
    return message.body if isinstance(message.body, bytes) else str(message.body).encode()


class Intake(ConsumerMixin):
    """The `lethe intake` consumer. Acks only after the event was filed or dead-lettered.

    Messages are collected into batches, filed when ``batch_size`` messages are in or ``batch_window``
    seconds after the first one arrived (a quiet queue does not hold a batch longer). Each is checked alone;
    the batch's erasure requests are filed in one ledger transaction per (actor, dry_run, regime), their
    tasks dispatched together, and only then are the messages acknowledged. A group the ledger refuses (an
    idempotency conflict, a bad regime) goes through ``handle`` one event at a time, so one bad event never
    costs the others; an unreachable ledger requeues the whole batch. Follow-ups (data_written) go one by one.
    """

    PREFETCH = 200  # unacked messages the broker may hand us: more than a batch, so the next one is waiting

    def __init__(self, lethe: Lethe, connection: Connection, key: bytes, *, batch_size: int = 100,
                 batch_window: float = 0.05):
        self.lethe = lethe
        self.connection = connection
        self.key = key
        self.batch_size = max(1, min(batch_size, self.PREFETCH))
        self.batch_window = batch_window
        self._pending: list[Message] = []
        self._first_at = 0.0  # monotonic time the oldest pending message arrived

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
        # on_message gets the raw message: kombu must not try to decode application/cloudevents+json.
        return [consumer_cls(queues=[intake_queue()], on_message=self.on_message, prefetch_count=self.PREFETCH)]

    def on_connection_revived(self) -> None:
        declare(self.connection)

    def on_message(self, message: Message) -> None:
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.append(message)

    def consume(self, limit: int | None = None, timeout: float | None = None, safety_interval: float = 1,
                **kwargs: Any) -> Iterator[None]:
        """kombu's ConsumerMixin.consume, but while a batch is pending the broker is waited on only until
        the batch is due: it is filed when full or when its window is over, whether or not more came."""
        elapsed = 0.0
        with self.consumer_context(**kwargs) as (conn, _channel, _consumers):
            try:
                for _ in range(limit) if limit else itertools.count():
                    if self.should_stop:
                        self.flush()  # received already: file them rather than leave them for a redelivery
                        break
                    self.on_iteration()
                    due = self._first_at + self.batch_window - time.monotonic()
                    try:
                        conn.drain_events(timeout=max(due, 0.001) if self._pending else safety_interval)
                    except TimeoutError:
                        if self._pending:
                            self.flush()
                            continue
                        conn.heartbeat_check()
                        elapsed += safety_interval
                        if timeout and elapsed >= timeout:
                            raise
                    except OSError:
                        if not self.should_stop:
                            raise
                    else:
                        if self._pending and (len(self._pending) >= self.batch_size
                                              or time.monotonic() - self._first_at >= self.batch_window):
                            self.flush()
                        yield
                        elapsed = 0
            finally:
                self._pending = []  # a lost connection: the broker redelivers what was not acked
        log.debug("intake.consume_exiting")

    def flush(self) -> None:
        """File, dead-letter or requeue every pending message; each is acked or requeued exactly once."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._settle(batch)
        except DBAPIError as exc:  # the ledger is unreachable: give the events back, try again shortly
            log.warning("intake.ledger_unavailable", error=type(exc).__name__)
            time.sleep(1.0)
            for message in batch:
                if not message.acknowledged:
                    message.requeue()

    def _settle(self, batch: list[Message]) -> None:
        datamap = self.lethe.load_map()
        groups: dict[tuple[str, bool, str], list[_Requested]] = {}
        others: list[tuple[Message, CloudEvent]] = []
        for message in batch:
            body = _body(message)
            try:
                event = check(body, self.key)
                if event.type != ERASURE_REQUESTED:
                    others.append((message, event))
                    continue
                data, subject = checked_data(event, ErasureRequestedData, datamap)
            except Rejected as rejected:
                self.dead_letter(body, rejected, message)
                continue
            group = (event_actor(event), data.dry_run, data.regime)
            groups.setdefault(group, []).append(_Requested(message, event, subject, idempotency_key(event)))
        for (actor, dry_run, regime), items in groups.items():
            self._file_group(datamap, items, actor=actor, dry_run=dry_run, regime=regime)
        for message, event in others:  # tombstone follow-ups are rare: one at a time
            self._one(message, event)

    def _file_group(self, datamap: DataMap, items: list[_Requested], *, actor: str, dry_run: bool,
                    regime: str) -> None:
        """One file_requests call for erasure requests sharing (actor, dry_run, regime), one dispatch, then
        the acks. The same (source, id) twice in the batch is filed once; twice with different subjects the
        later one is a duplicate without a request, as handle answers an IdempotencyConflict."""
        first: dict[str, _Requested] = {}
        filings: list[Filing] = []
        for item in items:
            if item.key not in first:
                first[item.key] = item
                filings.append(Filing(item.subject, item.key))
        try:
            filed, dispatches = self.lethe.ledger.file_requests(datamap, filings, dry_run=dry_run, regime=regime,
                                                                actor=actor)
        except LedgerError:  # an idempotency conflict or a refused request: find which, one event at a time
            for item in items:
                self._one(item.message, item.event)
            return
        by_key = {filing.idempotency_key: result for filing, result in zip(filings, filed, strict=True)}
        self.lethe.send(dispatches)
        for item in items:
            request_id, created = by_key[item.key]
            if first[item.key] is item:
                outcome = Outcome("filed" if created else "duplicate", request_id)
            elif dict(first[item.key].subject) == dict(item.subject):
                outcome = Outcome("duplicate", request_id)
            else:
                outcome = Outcome("duplicate")
            log.info("intake.event", outcome=outcome.action, request_id=outcome.request_id, type=item.event.type)
            item.message.ack()

    def _one(self, message: Message, event: CloudEvent) -> None:
        """The event alone through ``handle``; DBAPIError goes up (the batch is requeued)."""
        try:
            outcome = handle(self.lethe, event)
        except Rejected as rejected:
            self.dead_letter(_body(message), rejected, message)
            return
        except LedgerError as exc:  # e.g. an unknown regime: the event is bad, retrying cannot help
            self.dead_letter(_body(message), Rejected("malformed", str(exc)[:200]), message)
            return
        log.info("intake.event", outcome=outcome.action, request_id=outcome.request_id, type=event.type)
        message.ack()

    def dead_letter(self, body: bytes, rejected: Rejected, message: Message) -> None:
        # Counted first: an unreachable ledger then requeues the event before it reached the dead queue.
        self.lethe.ledger.count_dead_letter(rejected.reason)
        producer = Producer(self.connection.default_channel)
        producer.publish(body, exchange=DEAD_EXCHANGE, routing_key=DEAD_QUEUE.routing_key,
                         content_type=message.content_type or CONTENT_TYPE, content_encoding="binary",
                         headers={"x-lethe-reason": rejected.reason}, delivery_mode=2,
                         declare=[DEAD_EXCHANGE, DEAD_QUEUE], retry=True)
        log.warning("intake.dead_lettered", reason=rejected.reason, detail=rejected.detail)
        message.ack()


def publish_outbox(lethe: Lethe, producer: Producer, key: bytes | None) -> int:
    """Publish the ledger's pending outbound events; signed when an event key is configured. A broker error
    leaves the rest in the outbox (consumers deduplicate on the event id)."""
    maybe_declare(EXCHANGE, producer.channel)

    return lethe.ledger.publish_outbox(lambda _type, event: send_event(producer, sign(event, key) if key else event))
