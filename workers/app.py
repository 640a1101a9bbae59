"""The Celery app: one queue per target kind, late acks, prefetch 1. Celery is only the transport.

``lethe worker`` runs it (``workers.celery_app`` exposes it to Celery's own tools); the ledger decides what runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery
from kombu import Exchange, Queue

from workers.targets.base import known_kinds

if TYPE_CHECKING:
    from workers.host import WorkerHost

CONTROL_QUEUE = "lethe.control"


def purge_queues() -> list[str]:
    return [f"purge.{kind}" for kind in sorted(known_kinds())]


def create_app(host: WorkerHost) -> Celery:
    settings = host.settings
    embedded = settings.broker_url is None
    app = Celery("lethe", broker=settings.broker_url or "memory://localhost//", set_as_current=False)
    exchange = Exchange("lethe.tasks", type="direct", durable=True)
    queues = [Queue(name, exchange, routing_key=name, durable=True)
              for name in [*purge_queues(), CONTROL_QUEUE]]
    app.conf.update(
        task_queues=queues,
        task_default_queue=CONTROL_QUEUE,
        task_default_exchange="lethe.tasks",
        task_default_routing_key=CONTROL_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # At-least-once: a message is acknowledged only after its task ran, and given back if the worker
        # dies mid-task; one message at a time per process so a long purge does not hoard others.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis hands an unacked message to another worker after this; it must exceed the lease so a
            # running purge is not run twice in parallel without need (reconcile covers lost ones sooner).
            "visibility_timeout": max(3600, 2 * settings.task_lease_seconds),
            **({"polling_interval": 0.01} if embedded else {}),
        },
        beat_schedule={
            "reconcile": {"task": "lethe.reconcile", "schedule": 60.0, "options": {"queue": CONTROL_QUEUE}},
        },
    )
    app.lethe = host

    from workers.tasks import register

    register(app)
    return app


def declare_queues(app: Celery) -> None:
    """Create the exchanges and every queue on the broker (tasks and events), so messages sent before a
    worker or the intake starts wait."""
    from orchestrator.events import declare

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.conf.task_queues:
            queue(channel).declare()
        declare(conn)
