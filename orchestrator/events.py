"""Platform events on the wire (SPEC "Events"): signed CloudEvents on the durable topic exchange lethe.events.

In: ``lethe.erasure.requested`` files a request; ``lethe.subject.data_written`` files a follow-up erasure
of one target for the identifiers of a subject erased within the tombstone period;
``lethe.store.restored`` re-erases, from one restored target, every subject erased since its copy was
taken (orchestrator.replay). ``check`` decides, for
any bytes at all, whether a message is an authentic event lethe consumes or which dead-letter reason it
gets: size, strict UTF-8 JSON of bounded depth, HMAC-SHA256 signature (constant time), CloudEvents shape,
type, and ``time`` inside the replay window. The consumer that files them is ``orchestrator.intake``; bad
messages go to ``orchestrator.deadletters``.

Out: the ledger's outbox (``lethe.erasure.task_completed``, ``.completed``, ``.failed``, …) is published
signed with lethe's Ed25519 signing key, never with ``LETHE_EVENT_KEY``: a consumer able to check lethe's
events must not be able to forge a request. ``verify_outbound`` is the consumer's check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from kombu import Connection, Exchange, Producer, Queue
from kombu.common import maybe_declare
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import certificates
from orchestrator.certificates import canonical_json
from orchestrator.config import Settings
from orchestrator.identifiers import InvalidIdentifier, Subject
from orchestrator.ledger import stored_idempotency_key
from orchestrator.times import to_utc

if TYPE_CHECKING:
    from orchestrator.datamap import DataMap
    from orchestrator.ledger import Ledger

EXCHANGE = Exchange("lethe.events", type="topic", durable=True)
ERASURE_REQUESTED = "lethe.erasure.requested"
DATA_WRITTEN = "lethe.subject.data_written"
STORE_RESTORED = "lethe.store.restored"
CONSUMED_TYPES = (ERASURE_REQUESTED, DATA_WRITTEN, STORE_RESTORED)
INTAKE_QUEUE = "lethe.intake"
DEAD_EXCHANGE = Exchange("lethe.events.dead", type="direct", durable=True)
DEAD_QUEUE = Queue("lethe.events.dead", DEAD_EXCHANGE, routing_key="lethe.events.dead", durable=True)
CONTENT_TYPE = "application/cloudevents+json"
MAX_EVENT_BYTES = 64 * 1024
# An event is four levels deep (event, data, subject, value); the bound keeps json's recursion far from
# Python's stack limit whatever the body holds.
MAX_JSON_DEPTH = 16
CLOCK_SKEW = timedelta(minutes=5)  # how far ahead of our clock an event's time may be (SPEC)
REASONS = ("unsigned", "bad-signature", "malformed", "unknown-type", "bad-subject", "oversize", "stale")


def intake_queue() -> Queue:
    """The durable intake queue, bound to every type lethe consumes."""
    from kombu import binding

    return Queue(INTAKE_QUEUE, exchange=EXCHANGE, durable=True,
                 bindings=[binding(EXCHANGE, routing_key=t) for t in CONSUMED_TYPES])


def declare(connection: Connection) -> None:
    """Declare the exchanges and the intake and dead-letter queues, so events published while no consumer
    runs wait in ``lethe.intake``."""
    channel = connection.default_channel
    for entity in (EXCHANGE, DEAD_EXCHANGE, intake_queue(), DEAD_QUEUE):
        entity(channel).declare()


# -- inbound signing (HMAC under LETHE_EVENT_KEY) ----------------------------------------------------------
def signature(event: Mapping[str, Any], key: bytes) -> str:
    """hex HMAC-SHA256 over the canonical JSON of the event without its ``signature`` attribute."""
    body = {k: v for k, v in event.items() if k != "signature"}
    return hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()


def sign(event: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    return {**event, "signature": signature(event, key)}


def make_event(event_type: str, data: Mapping[str, Any], *, source: str, key: bytes,
               event_id: str | None = None, time: datetime | None = None) -> dict[str, Any]:
    """A CloudEvent 1.0 signed for lethe's intake (``time`` defaults to now)."""
    at = (time or datetime.now(UTC)).astimezone(UTC)
    return sign({"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": source, "type": event_type,
                 "time": at.isoformat().replace("+00:00", "Z"), "datacontenttype": "application/json",
                 "data": dict(data)}, key)


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


def publish_store_restored(broker_url: str, target: str, restored_from: datetime, *, source: str, key: bytes,
                           event_id: str | None = None) -> str:
    """For platform services: ``target`` (a data-map target name) was restored from a copy taken at
    ``restored_from``; lethe re-erases from it every subject erased since."""
    at = to_utc(restored_from).isoformat().replace("+00:00", "Z")
    event = make_event(STORE_RESTORED, {"target": target, "restored_from": at}, source=source, key=key,
                       event_id=event_id)
    with Connection(broker_url) as conn:
        publish(conn, event)
    return str(event["id"])


# -- outbound signing (Ed25519 signing key) ----------------------------------------------------------------
def sign_outbound(event: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """lethe's own event signed with its Ed25519 key: extension ``signingkeyid`` (``key_id`` of the public
    key, inside the signed bytes) and ``signature`` = standard base64 over the canonical JSON of the event
    without ``signature``. It is not an HMAC, so the intake refuses it as a request (bad-signature)."""
    body = {k: v for k, v in event.items() if k != "signature"}
    body["signingkeyid"] = certificates.key_id(key.public_key())
    return certificates.sign(body, key)


def verify_outbound(event: Mapping[str, Any], public_keys: Iterable[Ed25519PublicKey]) -> bool:
    """For consumers of lethe's events: True if ``event`` (parsed JSON) was signed by the one of
    ``public_keys`` its ``signingkeyid`` names (``lethe certificate --public-key`` prints them)."""
    wanted = event.get("signingkeyid")
    for public_key in public_keys:
        if certificates.key_id(public_key) == wanted:
            return certificates.verify(dict(event), public_key)
    return False


def publish_outbox(ledger: Ledger, producer: Producer) -> int:
    """Publish the ledger's pending outbound events, each signed with the ledger's signing key. A broker
    error leaves the rest in the outbox (consumers deduplicate on the event id)."""
    maybe_declare(EXCHANGE, producer.channel)
    key = ledger.signing_key
    with bindings_read_once(producer.channel):
        return ledger.publish_outbox(lambda _type, event: send_event(producer, sign_outbound(event, key)))


@contextmanager
def bindings_read_once(channel: Any) -> Iterator[None]:
    """While a batch of events is published, read each exchange's bindings from the broker once.

    kombu's virtual transports (Redis) route a topic message by reading the exchange's bindings from the
    broker at every publish: a round trip and a new client per event, 12% of a worker's CPU in the
    orchestration figure. A queue bound while the batch is published gets the events published after
    the batch, as one bound a moment later would. A broker that routes itself (AMQP) has no such read."""
    read = getattr(channel, "get_table", None)
    if read is None:
        yield
        return
    tables: dict[str, Any] = {}
    channel.get_table = lambda exchange: tables[exchange] if exchange in tables else \
        tables.setdefault(exchange, read(exchange))
    try:
        yield
    finally:
        del channel.get_table  # the transport's own method again


# -- checks ------------------------------------------------------------------------------------------------
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow")  # CloudEvents extension attributes are allowed

    specversion: str = Field(pattern=r"^1\.0$")
    # No control characters: these reach log lines, the audit trail (the actor) and the ledger, and
    # PostgreSQL refuses a NUL in text - the event, not the ledger, is at fault.
    id: str = Field(min_length=1, max_length=256, pattern=_PRINTABLE)
    source: str = Field(min_length=1, max_length=1024, pattern=_PRINTABLE)
    type: str = Field(min_length=1, max_length=256, pattern=_PRINTABLE)
    time: str = Field(min_length=1, max_length=64)
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


class StoreRestoredData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=64)
    restored_from: str = Field(min_length=1, max_length=64)  # RFC 3339 with an offset: when the copy was taken


D = TypeVar("D", bound=SubjectData)


class Rejected(Exception):
    """Why a message is dead-lettered: ``reason`` is the SPEC's code; ``detail`` never holds a raw value."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# One token of a JSON text for the depth count: a string (a string left open runs to the end, so the scan
# stays linear) or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII)


def nested_too_deep(text: str) -> bool:
    """True when the arrays and objects of a JSON text nest deeper than MAX_JSON_DEPTH (brackets inside
    strings do not count). Checked before parsing: json's recursion would overflow on 40 KB of '['."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:  # the usual event: no scan needed
        return False
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        if token.group() in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif token.group() in ("]", "}"):
            depth -= 1
    return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")  # two readers could otherwise see two different events
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """Strict JSON of a message body, or Rejected: at most 64 KiB, UTF-8 (decoded strictly, no other
    encoding guessed), nested at most MAX_JSON_DEPTH deep, no NaN/Infinity, no duplicate keys."""
    if len(body) > MAX_EVENT_BYTES:
        raise Rejected("oversize", f"{len(body)} bytes > {MAX_EVENT_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("malformed", "not UTF-8") from None
    if nested_too_deep(text):
        raise Rejected("malformed", f"nested deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except ValueError:
        raise Rejected("malformed", "not JSON") from None


def event_time(value: str) -> datetime:
    """An RFC 3339 date-time with its offset, converted to UTC; ValueError if it is not one (an offset is
    required: a time without one names no instant)."""
    if not _RFC3339.fullmatch(value):
        raise ValueError("not an RFC 3339 date-time with an offset")
    return to_utc(datetime.fromisoformat(value.upper()))  # InvalidTime (a ValueError) past the UTC range


def _authenticated(raw: dict[str, Any], key: bytes) -> None:
    given = raw.get("signature")
    if not given:
        raise Rejected("unsigned")
    try:
        expected = signature(raw, key)
    except (UnicodeEncodeError, TypeError, ValueError):  # e.g. a lone surrogate has no UTF-8 form
        raise Rejected("malformed", "not representable as canonical UTF-8 JSON") from None
    if not isinstance(given, str) or not _HEX_SIGNATURE.fullmatch(given) or not hmac.compare_digest(given, expected):
        raise Rejected("bad-signature")


def check(body: bytes, key: bytes, *, max_age_days: int | None = None, now: datetime | None = None) -> CloudEvent:
    """Parse and authenticate any message body: the event, or Rejected with its dead-letter reason. Never
    raises anything else. An event whose ``time`` is more than ``max_age_days`` (LETHE_EVENT_MAX_AGE_DAYS)
    old or more than five minutes ahead is ``stale``: its dedupe key may be forgotten, so it is not filed."""
    raw = parse_json(body)
    if not isinstance(raw, dict):
        raise Rejected("malformed", "not a JSON object")
    _authenticated(raw, key)
    try:
        event = CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise Rejected("malformed", f"{len(exc.errors())} invalid CloudEvent attribute(s)") from None
    if event.type not in CONSUMED_TYPES:
        raise Rejected("unknown-type", event.type[:64])
    try:
        at = event_time(event.time)
    except ValueError as exc:
        raise Rejected("malformed", f"time: {exc}") from None
    now = (now or datetime.now(UTC)).astimezone(UTC)
    days = Settings.model_fields["event_max_age_days"].default if max_age_days is None else max_age_days
    if at < now - timedelta(days=days):
        raise Rejected("stale", f"time is more than {days} days old")
    if at > now + CLOCK_SKEW:
        raise Rejected("stale", "time is more than 5 minutes ahead of the clock")
    return event


def event_dedupe_key(source: str, event_id: str) -> str:
    """Deduplication on (source, id): the same pair always maps to the same stored key."""
    return stored_idempotency_key("event", hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest())


def idempotency_key(event: CloudEvent) -> str:
    return event_dedupe_key(event.source, event.id)


def request_for_event(ledger: Ledger, source: str, event_id: str) -> str | None:
    """The id of the request the event (``source``, ``id``) made, or None (not filed, dead-lettered, or its
    dedupe key forgotten after 30 days). For ``lethe status --event`` and the API."""
    return ledger.request_by_idempotency_key(event_dedupe_key(source, event_id))


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


def restored_data(event: CloudEvent, datamap: DataMap) -> tuple[str, datetime]:
    """A ``lethe.store.restored`` event's target (one of the map's) and ``restored_from`` (UTC). Raises
    Rejected ``malformed`` for an unknown target or a time that is no RFC 3339 date-time with an offset."""
    try:
        data = StoreRestoredData.model_validate(event.data)
    except ValidationError as exc:
        raise Rejected("malformed", f"{len(exc.errors())} invalid data field(s)") from None
    if data.target not in {t.name for t in datamap.targets}:
        raise Rejected("malformed", "data.target names no target of the data map")
    try:
        return data.target, event_time(data.restored_from)
    except ValueError as exc:
        raise Rejected("malformed", f"data.restored_from: {exc}") from None
