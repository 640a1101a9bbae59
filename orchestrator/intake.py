"""`lethe intake`: the consumer that files what authentic platform events ask for (SPEC "Events").

Every message is settled exactly once: filed (then acknowledged), dead-lettered with its body unchanged
(then acknowledged), or - only while the ledger is unreachable - given back to the queue. ``settle_one`` is
the one boundary where that is decided for a message: whatever its bytes, and even if lethe itself has a
bug on it, the message is filed or dead-lettered and the next one is read; it never stops the intake.

A redelivered event (the consumer died between filing and ack) is filed with an idempotency key derived
from (source, id), so it returns the request it already made instead of making a second one.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import kombu.compression
from kombu import Connection, Message
from kombu.mixins import ConsumerMixin
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from orchestrator import deadletters
from orchestrator.events import (
    ERASURE_REQUESTED,
    STORE_RESTORED,
    CloudEvent,
    DataWrittenData,
    ErasureRequestedData,
    Rejected,
    check,
    checked_data,
    declare,
    event_actor,
    idempotency_key,
    intake_queue,
    restored_data,
)
from orchestrator.followups import file_follow_ups, follow_up
from orchestrator.identifiers import InvalidIdentifier, Subject
from orchestrator.identities import ResolutionUnavailable
from orchestrator.ledger import IdempotencyConflict, LedgerError
from orchestrator.logs import get_logger
from orchestrator.planner import Submission

if TYPE_CHECKING:
    from orchestrator.datamap import DataMap
    from orchestrator.service import Lethe

log = get_logger("lethe.intake")

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    action: str  # "filed", "duplicate", "ignored", "replaying" (a restored store's replay was sent)
    request_id: str | None = None


def handle(lethe: Lethe, event: CloudEvent, datamap: DataMap | None = None) -> Outcome:
    """File what an authenticated event asks for. Raises Rejected for bad data."""
    actor = event_actor(event)
    datamap = datamap or lethe.load_map()
    try:
        if event.type == ERASURE_REQUESTED:
            data, subject = checked_data(event, ErasureRequestedData, datamap)
            request_id, created = lethe.submit(dict(subject), dry_run=data.dry_run, regime=data.regime, actor=actor,
                                               idempotency_key=idempotency_key(event), datamap=datamap)
            return Outcome("filed" if created else "duplicate", request_id)
        if event.type == STORE_RESTORED:
            return replay_restored(lethe, event, datamap)
        written, subject = checked_data(event, DataWrittenData, datamap)
        if written.target not in {t.name for t in datamap.targets}:
            raise Rejected("malformed", "data.target names no target of the data map")
        erased, follows = tombstoned_part(lethe, subject)
        if not erased:
            return Outcome("ignored")  # no identifier of this subject was erased: nothing to do
        (request_id, created), = file_follow_ups(lethe, datamap, written.target, [
            follow_up(erased, follows, f"data written to {written.target} after erasure", idempotency_key(event))],
            actor=actor)
        return Outcome("filed" if created else "duplicate", request_id)
    except IdempotencyConflict:
        return Outcome("duplicate")  # same (source, id) with another body: never a second request


def replay_restored(lethe: Lethe, event: CloudEvent, datamap: DataMap) -> Outcome:
    """A ``lethe.store.restored`` event: its replay goes to a ``lethe.replay`` task on the control queue, as
    a scan of a big store must not hold up the intake. A target that cannot be scanned is dead-lettered
    ``malformed`` with the reason. A redelivered event sends the replay again, which files nothing twice:
    each follow-up's idempotency key is derived from (target, restored_from, subject hash)."""
    from orchestrator.replay import ReplayError, scanner
    from workers.app import CONTROL_QUEUE

    target, restored_from = restored_data(event, datamap)
    try:
        scanner(datamap, target)
    except ReplayError as exc:
        raise Rejected("malformed", str(exc)[:200]) from None
    lethe.app.send_task("lethe.replay", args=[target, restored_from.isoformat(), event_actor(event)],
                        queue=CONTROL_QUEUE)
    return Outcome("replaying")


def tombstoned_part(lethe: Lethe, subject: Subject) -> tuple[Subject, str | None]:
    """The identifiers of ``subject`` that were erased within the tombstone period (their keyed hashes have
    tombstones), and the latest request that erased one. An identifier never erased is never purged
    through a data_written event, even when it arrives beside one that was."""
    hashes = subject.hashes(lethe.settings.subject_key_bytes)
    tombstones = lethe.ledger.tombstones_of(hashes.values(), lethe.settings.tombstone_days)
    erased = Subject({kind: subject[kind] for kind, digest in hashes.items() if digest in tombstones})
    left_out = sorted(digest for digest in hashes.values() if digest not in tombstones)
    if left_out:
        log.info("intake.not_erased_before", hashes=left_out, kept=len(left_out), erased=len(erased))
    return erased, next(iter(tombstones.values()), None)  # newest first


def ledger_unreachable(exc: DBAPIError) -> bool:
    """The ledger cannot be reached (the message is not at fault: give it back and retry) - as opposed to
    the ledger refusing this message's data (DataError, IntegrityError, …), which a retry cannot mend."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def verdict(step: Callable[[], T]) -> T | Rejected:
    """The one boundary where a message is decided: ``step``'s result, or the Rejected to dead-letter it
    with. Rejected keeps its reason; a ledger refusal (e.g. an unknown regime) and any other error - a bug
    on this one message - become ``malformed``, so the message is dead-lettered with its body unchanged (and
    can be replayed after a fix) while the intake reads on. Only an unreachable ledger (``ledger_unreachable``:
    the message is not at fault) goes up; the ledger refusing the message's data does not."""
    try:
        return step()
    except DBAPIError as exc:
        if ledger_unreachable(exc):
            raise
        log.error("intake.ledger_refused", error=type(exc).__name__)  # a DataError, say: this message's
        return Rejected("malformed", f"the ledger refused it ({type(exc).__name__})")
    except Rejected as rejected:
        return rejected
    except ResolutionUnavailable:  # the lookup database, not the message, is at fault: requeue it
        raise
    except InvalidIdentifier as exc:  # a value no selector may take, or one a lookup refused (never repeated)
        return Rejected("bad-subject", str(exc)[:200])
    except LedgerError as exc:
        return Rejected("malformed", str(exc)[:200])
    except Exception as exc:  # one message's failure must not stop the intake
        log.error("intake.message_failed", error=type(exc).__name__)
        return Rejected("malformed", f"could not be processed ({type(exc).__name__})")


def _refuse(_body: bytes) -> bytes:
    raise ValueError("lethe.events carries uncompressed JSON")


def refuse_compressed_bodies() -> None:
    """A CloudEvent on lethe.events is structured JSON, never compressed (SPEC). kombu would inflate a body
    whose ``compression`` header names a codec it knows before lethe sees it - 64 KiB of zlib inflates to
    64 MB, a few MB to gigabytes: a memory bomb that kills the intake, and kills it again on the redelivery.
    Every codec is registered again in this process with a decoder that refuses, so kombu leaves the body as
    it was sent; it is then dead-lettered ``malformed``, unchanged. (lethe compresses no Celery message.)"""
    for content_type in kombu.compression.encoders():
        encoder, _ = kombu.compression.get_encoder(content_type)
        kombu.compression.register(encoder, _refuse, content_type)


@dataclass(frozen=True)
class _Requested:
    """A checked ``lethe.erasure.requested`` event of a batch, ready to file."""

    message: Message
    event: CloudEvent
    subject: Subject
    key: str


def _body(message: Message) -> bytes:
    body = message.body
    if isinstance(body, bytes):
        return body
    return str(body).encode("utf-8", "surrogatepass")  # a lone surrogate stays invalid UTF-8


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
        refuse_compressed_bodies()
        self.lethe = lethe
        self.connection = connection
        self.key = key
        self.max_age_days = lethe.settings.event_max_age_days
        self.batch_size = max(1, min(batch_size, self.PREFETCH))
        self.batch_window = batch_window
        self._pending: list[Message] = []
        self._first_at = 0.0  # monotonic time the oldest pending message arrived
        self._dead: Connection | None = None

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
        # on_message gets the raw message: kombu must not try to decode application/cloudevents+json.
        return [consumer_cls(queues=[intake_queue()], on_message=self.on_message, prefetch_count=self.PREFETCH)]

    def on_connection_revived(self) -> None:
        declare(self.connection)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        # kombu's default acknowledges a message it cannot decode (an unknown or refused ``compression``
        # header) and drops it: lost without a trace. Its body is as sent: settle it like any other.
        self.on_message(message)

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
                    except Exception as exc:
                        if isinstance(exc, (*conn.connection_errors, *conn.channel_errors)):
                            raise  # kombu's run loop reconnects
                        # Not a message at all: bytes pushed onto the queue's Redis list without kombu's
                        # envelope fail kombu's own parsing, after Redis handed them over. Nothing to settle.
                        log.error("intake.unreadable_envelope", error=type(exc).__name__)
                    else:
                        if self._pending and (len(self._pending) >= self.batch_size
                                              or time.monotonic() - self._first_at >= self.batch_window):
                            self.flush()
                        yield
                        elapsed = 0
            finally:
                self._pending = []  # a lost connection: the broker redelivers what was not acked
                if self._dead is not None:
                    self._dead.release()
                    self._dead = None
        log.debug("intake.consume_exiting")

    def flush(self) -> None:
        """File, dead-letter or requeue every pending message; each is acked or requeued exactly once."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._settle(batch)
        except (DBAPIError, ResolutionUnavailable) as exc:  # the ledger or a lookup database is unreachable:
            # give the events back, try again shortly
            log.warning("intake.ledger_unavailable", error=type(exc).__name__)
            time.sleep(1.0)
            for message in batch:
                if not message.acknowledged:
                    message.requeue()

    def settle_one(self, message: Message, step: Callable[[], T]) -> T | None:
        """Run one message's ``step``: its result, or None once the message was dead-lettered (see
        ``verdict``). Only an unreachable ledger goes up: the batch is then requeued."""
        result = verdict(step)
        if isinstance(result, Rejected):
            self.dead_letter(_body(message), result, message)
            return None
        return result

    def _settle(self, batch: list[Message]) -> None:
        datamap = self.lethe.load_map()  # outside settle_one: a broken map is the operator's, not the events'
        groups: dict[tuple[str, bool, str], list[_Requested]] = {}
        others: list[tuple[Message, CloudEvent]] = []
        for message in batch:
            checked = self.settle_one(message, partial(self._checked, message, datamap))
            if checked is None:
                continue
            event, requested = checked
            if requested is None:
                others.append((message, event))
                continue
            data, subject = requested
            group = (event_actor(event), data.dry_run, data.regime)
            groups.setdefault(group, []).append(_Requested(message, event, subject, idempotency_key(event)))
        for (actor, dry_run, regime), items in groups.items():
            self._file_group(datamap, items, actor=actor, dry_run=dry_run, regime=regime)
        for message, event in others:  # tombstone follow-ups are rare: one at a time
            self._one(message, event, datamap)

    def _checked(self, message: Message, datamap: DataMap
                 ) -> tuple[CloudEvent, tuple[ErasureRequestedData, Subject] | None]:
        event = check(_body(message), self.key, max_age_days=self.max_age_days)
        if event.type != ERASURE_REQUESTED:
            return event, None
        return event, checked_data(event, ErasureRequestedData, datamap)

    def _file_group(self, datamap: DataMap, items: list[_Requested], *, actor: str, dry_run: bool,
                    regime: str) -> None:
        """One file_requests call for erasure requests sharing (actor, dry_run, regime), one dispatch, then
        the acks. The same (source, id) twice in the batch is filed once; twice with different subjects the
        later one is a duplicate without a request, as handle answers an IdempotencyConflict."""
        first: dict[str, _Requested] = {}
        submissions: list[Submission] = []
        for item in items:
            if item.key not in first:
                first[item.key] = item
                submissions.append(Submission(item.subject, item.key))
        try:  # the service's one filing path: identities resolved, planned, recorded, dispatched
            filed = self.lethe.file_many(datamap, submissions, dry_run=dry_run, regime=regime, actor=actor)
        except Exception as exc:  # a refused request, a race on a key, a bug: find which event, one at a time
            if (isinstance(exc, DBAPIError) and ledger_unreachable(exc)) or isinstance(exc, ResolutionUnavailable):
                raise
            for item in items:
                self._one(item.message, item.event, datamap)
            return
        by_key = {submission.idempotency_key: result for submission, result in zip(submissions, filed, strict=True)}
        for item in items:
            request_id, created = by_key[item.key]
            if first[item.key] is item:
                outcome = Outcome("filed" if created else "duplicate", request_id)
            elif dict(first[item.key].subject) == dict(item.subject):
                outcome = Outcome("duplicate", request_id)
            else:
                outcome = Outcome("duplicate")
            self._filed(item.message, item.event, outcome)

    def _one(self, message: Message, event: CloudEvent, datamap: DataMap) -> None:
        """The event alone through ``handle``; an unreachable ledger goes up (the batch is requeued)."""
        outcome = self.settle_one(message, partial(handle, self.lethe, event, datamap))
        if outcome is not None:
            self._filed(message, event, outcome)

    @staticmethod
    def _filed(message: Message, event: CloudEvent, outcome: Outcome) -> None:
        # Source and event id are the platform's names for the event, not personal data: they let an
        # operator find the request an event made (``lethe status --event SOURCE ID``).
        log.info("intake.event", outcome=outcome.action, request_id=outcome.request_id, type=event.type,
                 source=event.source[:180], event_id=event.id)
        message.ack()

    def dead_letter(self, body: bytes, rejected: Rejected, message: Message) -> None:
        # Counted first: an unreachable ledger then requeues the event before it reached the dead queue.
        self.lethe.ledger.count_dead_letter(rejected.reason)
        if self._dead is None:  # its own connection: publishes confirmed by the broker before the ack below
            self._dead = deadletters.confirming(self.connection)
        dead_id = deadletters.dead_letter(self._dead, body, rejected.reason, content_type=message.content_type,
                                          replay_of=(message.headers or {}).get(deadletters.REPLAY_OF))
        log.warning("intake.dead_lettered", reason=rejected.reason, detail=rejected.detail, dead_letter_id=dead_id)
        message.ack()
