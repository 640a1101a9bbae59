"""Dead letters an operator can act on (SPEC "Events"; `lethe dead-letters list` and `replay`).

Storage: the queue ``lethe.events.dead`` is the one place a dead letter lives. Its body is the message
exactly as it arrived (SPEC); its headers say why and when: ``x-lethe-reason`` (the SPEC's code),
``x-lethe-dead-letter-id`` (the id an operator names), ``x-lethe-dead-lettered-at`` (UTC, RFC 3339) and,
for a message that failed again after a replay, ``x-lethe-replay-of``. The ledger keeps only the counts
per reason (dashboard, /metrics); nothing of a body reaches it.

Reading the queue is a walk over it: each message is taken and put back at the tail, unchanged, before it
is acknowledged, so a crash mid-walk can duplicate a dead letter but never lose one. A listing shows the
event's type, source and id when the body has them, cut short and with any of the body's subject values
blanked out - never the body's identifiers. A replay puts the body, unchanged, back on ``lethe.intake``:
it is checked and deduplicated again like any event (a stale one is dead-lettered ``stale`` again).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kombu import Connection, Producer

from orchestrator.events import (
    CONTENT_TYPE,
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    INTAKE_QUEUE,
    Rejected,
    declare,
    parse_json,
)
from orchestrator.logs import get_logger, scrub

log = get_logger("lethe.deadletters")

REASON = "x-lethe-reason"
DEAD_LETTER_ID = "x-lethe-dead-letter-id"
DEAD_LETTERED_AT = "x-lethe-dead-lettered-at"
REPLAY_OF = "x-lethe-replay-of"
SHOWN_CHARACTERS = 80  # of a type, source or event id in a listing


class DeadLetterNotFound(LookupError):
    """No dead letter, or more than one, has the id (or id prefix) given; the message says which."""


@dataclass(frozen=True)
class DeadLetter:
    """What a listing shows of a dead letter: never its body's identifiers."""

    id: str
    reason: str
    dead_lettered_at: str | None
    type: str | None
    source: str | None
    event_id: str | None
    replay_of: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dead_letter(connection: Connection, body: bytes, reason: str, *, content_type: str | None = None,
                replay_of: str | None = None) -> str:
    """Put ``body``, unchanged, on the dead queue with its reason; returns the dead letter's id."""
    dead_id = str(uuid.uuid4())
    headers = {REASON: reason, DEAD_LETTER_ID: dead_id,
               DEAD_LETTERED_AT: datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    if replay_of:
        headers[REPLAY_OF] = replay_of
    _publish_dead(Producer(connection.default_channel), body, headers, content_type)
    return dead_id


def _publish_dead(producer: Producer, body: bytes, headers: dict[str, Any], content_type: str | None) -> None:
    producer.publish(body, exchange=DEAD_EXCHANGE, routing_key=DEAD_QUEUE.routing_key,
                     content_type=content_type or CONTENT_TYPE, content_encoding="binary", headers=headers,
                     delivery_mode=2, declare=[DEAD_EXCHANGE, DEAD_QUEUE], retry=True)


def list_dead_letters(connection: Connection) -> list[DeadLetter]:
    """Every dead letter in the queue, oldest first (the queue's own order changes as it is walked)."""
    return sorted(_walk(connection, lambda _entry: False), key=lambda entry: entry.dead_lettered_at or "")


def replay(connection: Connection, id_or_prefix: str) -> DeadLetter:
    """Move one dead letter (named by its id or a unique prefix of it) back to ``lethe.intake``, body
    unchanged. Raises DeadLetterNotFound."""
    wanted = resolve(list_dead_letters(connection), id_or_prefix)
    taken = [entry for entry in _walk(connection, lambda entry: entry.id == wanted.id) if entry.id == wanted.id]
    if not taken:
        raise DeadLetterNotFound(f"dead letter {wanted.id} left the queue meanwhile")
    log.info("deadletters.replayed", dead_letter_id=wanted.id, reason=wanted.reason)
    return taken[0]


def resolve(entries: list[DeadLetter], id_or_prefix: str) -> DeadLetter:
    """The one entry whose id starts with ``id_or_prefix`` (an id printed whole matches itself)."""
    matches = {entry.id: entry for entry in entries if id_or_prefix and entry.id.startswith(id_or_prefix)}
    if not matches:
        raise DeadLetterNotFound(f"no dead letter has the id {id_or_prefix!r} (lethe dead-letters list shows them)")
    if len(matches) > 1:
        raise DeadLetterNotFound(f"{len(matches)} dead letters have ids starting with {id_or_prefix!r}: "
                                 "give more of the id")
    return next(iter(matches.values()))


def _walk(connection: Connection, take: Callable[[DeadLetter], bool]) -> list[DeadLetter]:
    """Read each message the dead queue holds now, once, in order: the ones ``take`` picks go back to
    ``lethe.intake``, every other one to the dead queue's tail (given an id if it had none). Each is
    published - confirmed by the broker - before the original is acknowledged."""
    with confirming(connection) as confirmed:
        return _walk_on(confirmed, take)


def confirming(connection: Connection) -> Connection:
    """A copy of ``connection`` whose publishes wait for the broker's confirm (RabbitMQ publisher confirms;
    a Redis LPUSH is synchronous anyway): a message put back is on the queue before its original is acked,
    and counted by the next walk."""
    return connection.clone(transport_options={**(connection.transport_options or {}), "confirm_publish": True})


def _walk_on(connection: Connection, take: Callable[[DeadLetter], bool]) -> list[DeadLetter]:
    declare(connection)
    channel = connection.default_channel
    queue = DEAD_QUEUE(channel)
    producer = Producer(channel)
    seen: list[DeadLetter] = []
    for _ in range(queue.queue_declare().message_count):
        message = queue.get(no_ack=False)
        if message is None:  # another reader took the rest
            break
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode("utf-8", "surrogatepass")
        entry = describe(body, message.headers or {})
        if take(entry):
            producer.publish(body, exchange="", routing_key=INTAKE_QUEUE, content_type=message.content_type,
                             content_encoding="binary", headers={REPLAY_OF: entry.id}, delivery_mode=2, retry=True)
        else:
            headers = {**(message.headers or {}), DEAD_LETTER_ID: entry.id}
            _publish_dead(producer, body, headers, message.content_type)
        message.ack()
        seen.append(entry)
    return seen


def describe(body: bytes, headers: Mapping[str, Any]) -> DeadLetter:
    """A dead letter's listing: from its headers, and type, source and id from its body when it is JSON.
    Any bytes and headers at all give one; nothing of the body's subject is shown."""
    fields: dict[str, str | None] = {"type": None, "source": None, "id": None}
    try:
        raw = parse_json(body)
    except Rejected:
        raw = None
    if isinstance(raw, dict):
        values = _subject_values(raw)
        fields = {name: _shown(raw.get(name), values) for name in fields}
    return DeadLetter(id=_shown(headers.get(DEAD_LETTER_ID), []) or str(uuid.uuid4()),
                      reason=_shown(headers.get(REASON), []) or "unknown",
                      dead_lettered_at=_shown(headers.get(DEAD_LETTERED_AT), []), type=fields["type"],
                      source=fields["source"], event_id=fields["id"],
                      replay_of=_shown(headers.get(REPLAY_OF), []))


def _subject_values(raw: dict[str, Any]) -> list[str]:
    """The identifier values a body carries (data.subject), so that none is ever shown."""
    data = raw.get("data")
    subject = data.get("subject") if isinstance(data, dict) else None
    if not isinstance(subject, dict):
        return []
    return [v for v in subject.values() if isinstance(v, str) and v]


def _shown(value: object, subject_values: list[str]) -> str | None:
    """A header or attribute as a listing may show it: text only, printable, subject values blanked, short."""
    if not isinstance(value, str):
        return None
    text = "".join(ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF else "?" for ch in value)
    text = scrub(text, subject_values)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 1] + "…"
