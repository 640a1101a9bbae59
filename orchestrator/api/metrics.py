"""Prometheus metrics, computed from the ledger and the broker.

Workers run in other processes (often other hosts), so in-process counters would only see this one. The
ledger sees everything: a scrape reads it, but at most once every ``SNAPSHOT_SECONDS`` (the aggregates
scan the requests and tasks tables; scrapes from several Prometheus replicas, and the dashboard's overview,
share one reading). Broker figures come from ``broker.BrokerView`` (probed at most every 15 s). Names (all
prefixed ``lethe_``):

- ``lethe_requests{status}``: requests in the ledger by status (gauge)
- ``lethe_tasks{kind,status}``: tasks by target kind and status (gauge)
- ``lethe_items_erased_total{target}``: items erased, summed over completion records (counter; it drops when
  retention prunes old records, which Prometheus reads as a counter reset)
- ``lethe_task_duration_seconds{kind}``: time from a task's first start to its end, completed and failed tasks
  (histogram)
- ``lethe_task_retries_total{kind}``: retryable errors that were retried (counter)
- ``lethe_operator_retries_total``: operator retries of failed requests (counter)
- ``lethe_events_dead_lettered_total{reason}``: platform events sent to ``lethe.events.dead``, by reason (counter)
- ``lethe_resurrections_total{target}``: follow-ups the resurrection watch filed, by the target it found erased
  data in again (counter, from the ledger's requests; drops when retention prunes them)
- ``lethe_oldest_open_request_age_seconds``: age of the oldest request not completed or cancelled (gauge)
- ``lethe_requests_overdue``: requests not completed or cancelled past their legal deadline (gauge); a failed
  request still owes its erasure, so it counts
- ``lethe_requests_due_soon``: the same, due within 3 days (gauge)
- ``lethe_ledger_up``: 1 when the ledger answered (gauge)
- ``lethe_tasks_not_dispatched``: tasks whose hand-off to the broker failed, waiting for reconcile (gauge)
- ``lethe_workers{queue}``: workers seen consuming the queue in the last minute (gauge)
- ``lethe_queue_depth{queue}``: messages waiting in the queue (gauge; absent for a queue not declared)
- ``lethe_broker_up``: 1 when the broker answered its last probe (gauge; absent without a broker)

No label carries an identifier: labels are statuses, target kinds and target names from the data map.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.api.broker import BrokerView
from orchestrator.ledger import REQUEST_STATUSES, Snapshot
from orchestrator.logs import get_logger
from orchestrator.service import Lethe

log = get_logger("lethe.metrics")
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
METRIC_NAMES = (
    "lethe_requests", "lethe_tasks", "lethe_items_erased_total", "lethe_task_duration_seconds",
    "lethe_task_retries_total", "lethe_operator_retries_total", "lethe_events_dead_lettered_total",
    "lethe_resurrections_total",
    "lethe_oldest_open_request_age_seconds",
    "lethe_requests_overdue", "lethe_requests_due_soon", "lethe_ledger_up", "lethe_tasks_not_dispatched",
)
BROKER_METRIC_NAMES = ("lethe_workers", "lethe_queue_depth", "lethe_broker_up")
SNAPSHOT_SECONDS = 5.0


def _histogram(values: Iterable[float]) -> tuple[list[tuple[str, float]], float]:
    ordered = sorted(values)
    buckets = [("+Inf" if b == float("inf") else repr(float(b)), float(bisect.bisect_right(ordered, b)))
               for b in DURATION_BUCKETS]
    return buckets, float(sum(ordered))


class SnapshotCache:
    """``Ledger.metrics_snapshot`` read at most once every ``seconds``; concurrent callers wait for one reading."""

    def __init__(self, lethe: Lethe, seconds: float = SNAPSHOT_SECONDS):
        self.lethe, self.seconds = lethe, seconds
        self._lock = threading.Lock()
        self._taken: tuple[float, Snapshot] | None = None

    def get(self) -> Snapshot:
        with self._lock:
            if self._taken is None or time.monotonic() - self._taken[0] >= self.seconds:
                self._taken = (time.monotonic(), self.lethe.ledger.metrics_snapshot())
            return self._taken[1]


class LedgerCollector(Collector):
    def __init__(self, snapshots: SnapshotCache, broker: BrokerView):
        self.snapshots, self.broker = snapshots, broker

    def collect(self) -> Iterator[Metric]:
        yield from self._broker_metrics()
        up = GaugeMetricFamily("lethe_ledger_up", "1 when the ledger answered, else 0.")
        try:
            snap = self.snapshots.get()
        except SQLAlchemyError as exc:
            log.warning("metrics.ledger_unavailable", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        requests = GaugeMetricFamily("lethe_requests", "Erasure requests in the ledger, by status.",
                                     labels=["status"])
        for status in sorted(set(REQUEST_STATUSES) | set(snap.requests_by_status)):
            requests.add_metric([status], snap.requests_by_status.get(status, 0))
        yield requests

        tasks = GaugeMetricFamily("lethe_tasks", "Tasks (one per request and target), by target kind and status.",
                                  labels=["kind", "status"])
        for (kind, status), n in sorted(snap.tasks_by_kind_status.items()):
            tasks.add_metric([kind, status], n)
        yield tasks

        erased = CounterMetricFamily("lethe_items_erased", "Items erased (object versions and delete markers, "
                                     "rows, vectors, model versions), from completion records, by target.",
                                     labels=["target"])
        for target, n in sorted(snap.erased_by_target.items()):
            erased.add_metric([target], n)
        yield erased

        duration = HistogramMetricFamily("lethe_task_duration_seconds",
                                         "Time from a task's first start to its end (completed or failed).",
                                         labels=["kind"])
        for kind, values in sorted(snap.durations_by_kind.items()):
            buckets, total = _histogram(values)
            duration.add_metric([kind], buckets, total)
        yield duration

        retries = CounterMetricFamily("lethe_task_retries", "Retryable task errors that were retried, by kind.",
                                      labels=["kind"])
        for kind, n in sorted(snap.retries_by_kind.items()):
            retries.add_metric([kind], n)
        yield retries

        dead = CounterMetricFamily("lethe_events_dead_lettered", "Platform events sent to the dead-letter queue, "
                                   "by reason (unsigned, bad-signature, malformed, ...).", labels=["reason"])
        for reason, n in sorted(snap.dead_letters_by_reason.items()):
            dead.add_metric([reason], n)
        yield dead

        resurrections = CounterMetricFamily("lethe_resurrections", "Follow-ups the resurrection watch filed for "
                                            "erased data found again, by target.", labels=["target"])
        for target, n in sorted(snap.resurrections_by_target.items()):
            resurrections.add_metric([target], n)
        yield resurrections

        yield CounterMetricFamily("lethe_operator_retries", "Operator retries of requests with failed tasks.",
                                  value=snap.operator_retries)
        yield GaugeMetricFamily("lethe_oldest_open_request_age_seconds",
                                "Age of the oldest request not completed or cancelled (0 when none).",
                                value=snap.oldest_open_age)
        yield GaugeMetricFamily("lethe_requests_overdue",
                                "Requests not completed or cancelled (failed ones included) past their legal deadline.",
                                value=snap.overdue)
        yield GaugeMetricFamily("lethe_requests_due_soon", "Requests not completed or cancelled due within 3 days.",
                                value=snap.due_soon)
        yield GaugeMetricFamily("lethe_tasks_not_dispatched", "Tasks the broker did not take (unreachable); "
                                "reconcile sends them on its next pass.", value=snap.not_dispatched)


    def _broker_metrics(self) -> Iterator[Metric]:
        state = self.broker.state()
        if state is None:  # embedded mode: no broker to ask
            return
        yield GaugeMetricFamily("lethe_broker_up", "1 when the broker answered its last probe, else 0.",
                                value=1 if state.reachable else 0)
        workers = GaugeMetricFamily("lethe_workers", "Workers seen consuming the queue in the last minute.",
                                    labels=["queue"])
        for queue, n in sorted(state.workers.items()):
            workers.add_metric([queue], n)
        yield workers
        depth = GaugeMetricFamily("lethe_queue_depth", "Messages waiting in the queue.", labels=["queue"])
        for queue, waiting in sorted(state.depths.items()):
            if waiting is not None:
                depth.add_metric([queue], waiting)
        yield depth


def registry_for(snapshots: SnapshotCache, broker: BrokerView) -> CollectorRegistry:
    """A registry of its own per app: the process-wide default would mix apps (and tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(snapshots, broker))
    return registry
