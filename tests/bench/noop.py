"""Baseline for the orchestration benchmark: bare Celery no-op tasks with lethe's broker/worker settings."""

import os

import redis
from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12"))
app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                task_ignore_result=True, task_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True)
_counter = redis.Redis.from_url(app.conf.broker_url)


@app.task(name="bench.noop")
def noop(_task_id: str) -> None:
    _counter.incr("bench:done")
