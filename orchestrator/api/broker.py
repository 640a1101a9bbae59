"""What the broker says, for the dashboard and /metrics: workers alive per queue, and messages waiting.

Worker liveness comes from Celery's remote control (``inspect().active_queues()``, a broadcast every
worker answers with the queues it consumes), not from heartbeats written by workers: it needs no table and
no worker code, works on every broker Celery speaks, and answers "who consumes ``purge.s3`` right now".
Each worker's last answer is remembered, so a worker counts as alive for a minute after it was last seen,
and one slow reply does not make the whole fleet look dead. The broadcast waits at most ``REPLY_TIMEOUT``
and runs at most once every ``PROBE_SECONDS`` per API process, whatever the number of scrapes and pages;
a request that comes while another thread probes gets the last answer at once.

Queue depth: Redis ``LLEN`` of each queue (and kombu's priority lists); RabbitMQ a passive declare, whose
reply carries the message count. Without a broker (embedded mode) there is nothing to ask: None.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.logs import get_logger
from orchestrator.service import Lethe

log = get_logger("lethe.broker")
PROBE_SECONDS = 15.0
REPLY_TIMEOUT = 1.0
ALIVE_SECONDS = 60.0
REDIS_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's Redis priority lists


@dataclass
class BrokerState:
    """One probe's view. ``reachable`` False: the broker did not answer (depths and workers unknown)."""

    reachable: bool
    workers: dict[str, int] = field(default_factory=dict)  # queue -> workers seen in the last minute
    depths: dict[str, int | None] = field(default_factory=dict)  # queue -> messages waiting (None: absent)
    probed_at: float = 0.0


def queue_names() -> list[str]:
    from workers.app import CONTROL_QUEUE, purge_queues

    return [*purge_queues(), CONTROL_QUEUE]


class BrokerView:
    def __init__(self, lethe: Lethe, probe_seconds: float = PROBE_SECONDS):
        self.lethe = lethe
        self.probe_seconds = probe_seconds
        self._lock = threading.Lock()
        self._state: BrokerState | None = None
        self._seen: dict[str, tuple[float, frozenset[str]]] = {}  # worker -> (last seen, queues)

    @property
    def configured(self) -> bool:
        return bool(self.lethe.settings.broker_url)

    def state(self) -> BrokerState | None:
        """The broker's view, probed again when the last one is older than ``probe_seconds``."""
        if not self.configured:
            return None
        fresh = self._state is not None and time.monotonic() - self._state.probed_at < self.probe_seconds
        if fresh or not self._lock.acquire(blocking=self._state is None):
            return self._state
        try:
            self._state = self._probe()
            return self._state
        finally:
            self._lock.release()

    def _probe(self) -> BrokerState:
        at = time.monotonic()
        names = queue_names()
        try:
            depths = self._depths(names)
        except Exception as exc:  # the broker being down must not take the dashboard or /metrics with it
            log.warning("broker.unavailable", error=type(exc).__name__)
            return BrokerState(False, probed_at=at)
        try:
            replies: dict[str, list[dict[str, Any]]] = (
                self.lethe.app.control.inspect(timeout=REPLY_TIMEOUT).active_queues() or {})
        except Exception as exc:
            log.warning("broker.inspect_failed", error=type(exc).__name__)
            replies = {}
        for worker, queues in replies.items():
            self._seen[worker] = (at, frozenset(str(q.get("name")) for q in queues or ()))
        self._seen = {w: seen for w, seen in self._seen.items() if at - seen[0] <= ALIVE_SECONDS}
        workers = {name: sum(name in queues for _, queues in self._seen.values()) for name in names}
        return BrokerState(True, workers, depths, at)

    def _depths(self, names: list[str]) -> dict[str, int | None]:
        url = self.lethe.settings.broker_url or ""
        if url.startswith(("redis://", "rediss://")):
            return self._redis_depths(url, names)
        depths: dict[str, int | None] = {}
        with self.lethe.app.connection_for_read(connect_timeout=REPLY_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=0, timeout=REPLY_TIMEOUT)  # one try: the page must not hang
            channel = conn.channel()
            for name in names:
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:  # not declared: nothing can wait there (the channel is closed)
                    depths[name] = None
                    channel = conn.channel()
            channel.close()
        return depths

    def _redis_depths(self, url: str, names: list[str]) -> dict[str, int | None]:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            pipe = client.pipeline(transaction=False)
            for name in names:
                for suffix in REDIS_PRIORITY_SUFFIXES:
                    pipe.llen(name + suffix)
            lengths = pipe.execute()
        finally:
            client.close()
        step = len(REDIS_PRIORITY_SUFFIXES)
        return {name: int(sum(lengths[i * step:(i + 1) * step])) for i, name in enumerate(names)}
