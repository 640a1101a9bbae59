"""`make chaos`: erasures under fire, then the invariants.

Real processes on this machine, loopback only, bounded in count and time: `lethe worker` processes killed
with SIGKILL at random and restarted; a private Redis broker (own port, no persistence) restarted mid-run so
queued messages are really lost; a fault-injecting proxy in front of moto's S3 server; every ledger
connection cut once (PostgreSQL backends terminated); a `lethe reconcile --loop` process to recover.

A `lethe intake` process consumes platform events throughout; once the broker restarts are over, poison
messages (``tests/chaos/poison.py``: lone surrogates, 40 KB of '[', bytes that are not UTF-8, stale or
unsigned events naming a real subject) are published into the mix.

Prints one line of figures and exits 1 if an invariant fails: every request completed, no duplicate
completion record, no object of a non-subject deleted, no residue of a subject, a verified ledger, every
poison message dead-lettered with its reason and body unchanged, nothing filed from one.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from orchestrator import logs
from orchestrator.certificates import create_private_key
from orchestrator.config import Settings
from orchestrator.service import Lethe
from orchestrator.testing import FAKE_AWS_ENV, make_bucket, put_objects, s3_server, versions_per_owner
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.poison import poison_messages
from tests.fixtures.services import PG_ADMIN_URL, temporary_database

BIN = Path(sys.executable).parent
KEY = "c4" * 32
EVENT_KEY = "chaos-event-secret"
MAP = """\
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - name: photos
    kind: s3
    endpoint_url: {endpoint}
    bucket: chaos-photos
    prefix: "users/{{user_id}}/"
"""


@dataclass
class Options:
    requests: int = 300
    objects: int = 3  # per subject, each with 2 versions
    workers: int = 2
    fault_rate: float = 0.10
    kill_every: float = 4.0
    redis_restarts: int = 2
    time_limit: float = 900.0
    lease: int = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A private, non-persistent redis-server: restart() really loses every queued message."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class Processes:
    """lethe worker and reconcile processes, each in its own process group so SIGKILL takes its children."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.env, self.workdir = env, workdir
        self.workers: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self.kills = 0

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log, "ab") as out:
            return subprocess.Popen([str(BIN / "lethe"), *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def start_worker(self, i: int) -> None:
        proc = self._spawn(["worker", "-c", "2", "--loglevel", "WARNING"], f"worker-{i}.log")
        if i < len(self.workers):
            self.workers[i] = proc
        else:
            self.workers.append(proc)

    def kill_random_worker(self, rng: random.Random) -> None:
        i = rng.randrange(len(self.workers))
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait()
        self.kills += 1
        self.start_worker(i)

    def start_reconciler(self) -> None:
        self.others.append(self._spawn(["reconcile", "--loop", "2"], "reconcile.log"))

    def start_intake(self) -> None:
        self.others.append(self._spawn(["intake"], "intake.log"))

    def stop_all(self) -> None:
        for proc in [*self.workers, *self.others]:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in [*self.workers, *self.others]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()




def publish_raw(broker: str, bodies: list[bytes]) -> None:
    """Bodies as they came off a wire, on the routing key the intake consumes."""
    from kombu import Connection, Producer

    from orchestrator.events import CONTENT_TYPE, ERASURE_REQUESTED, EXCHANGE, declare

    with Connection(broker) as conn:
        declare(conn)  # a restarted broker forgot the intake's binding until the intake reconnects
        producer = Producer(conn.default_channel)
        for body in bodies:
            producer.publish(body, exchange=EXCHANGE, routing_key=ERASURE_REQUESTED, content_type=CONTENT_TYPE,
                             content_encoding="binary", declare=[EXCHANGE], retry=True)


def dead_letters(broker: str, expected: int, timeout: float) -> list[tuple[bytes, str]]:
    """(body, reason) of what reached lethe.events.dead, waiting up to ``timeout`` for ``expected``."""
    from kombu import Connection

    from orchestrator.events import DEAD_QUEUE

    got: list[tuple[bytes, str]] = []
    deadline = time.monotonic() + timeout
    with Connection(broker) as conn:
        queue = DEAD_QUEUE(conn.default_channel)
        queue.declare()
        while len(got) < expected and time.monotonic() < deadline:
            message = queue.get(no_ack=True)
            if message is None:
                time.sleep(0.2)
                continue
            got.append((message.body, message.headers.get("x-lethe-reason")))
    return got


def cut_ledger_connections(database: str) -> int:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).all())
    finally:
        admin.dispose()


def run(opts: Options, out: Any = sys.stdout) -> dict[str, Any]:
    rng = random.Random(42)
    os.environ.update(FAKE_AWS_ENV)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lethe-chaos-")))
        endpoint = stack.enter_context(s3_server())
        proxy = stack.enter_context(FaultProxy(endpoint, opts.fault_rate))
        db_url = stack.enter_context(temporary_database("lethe_chaos"))
        db_name = db_url.rsplit("/", 1)[1]
        redis = Redis(workdir)
        redis.start()
        stack.callback(redis.stop)

        subjects = [str(1000 + i) for i in range(opts.requests)]
        bystanders = [str(5000 + i) for i in range(max(10, opts.requests // 3))]
        make_bucket(endpoint, "chaos-photos")
        put_objects(endpoint, "chaos-photos",
                    [f"users/{u}/p{i}.jpg" for u in subjects + bystanders for i in range(opts.objects)], versions=2)
        before = versions_per_owner(endpoint, "chaos-photos")

        signing = workdir / "signing.pem"
        create_private_key(signing)
        data_map = workdir / "datamap.yaml"
        data_map.write_text(MAP.format(endpoint=proxy.url))  # workers reach S3 only through the faults
        env = {**os.environ, "LETHE_BROKER_URL": redis.url, "LETHE_DATABASE_URL": db_url, "LETHE_SUBJECT_KEY": KEY,
               "LETHE_SIGNING_KEY": str(signing), "LETHE_DATA_MAP": str(data_map),
               "LETHE_TASK_LEASE_SECONDS": str(opts.lease), "LETHE_TASK_MAX_RETRIES": "8",
               "LETHE_EVENT_KEY": EVENT_KEY}
        lethe = Lethe(Settings(broker_url=redis.url, database_url=db_url, subject_key=KEY, signing_key=signing,
                               data_map=data_map, task_lease_seconds=opts.lease, task_max_retries=8))
        lethe.migrate()  # before the processes start
        procs = Processes(env, workdir)
        stack.callback(procs.stop_all)
        for i in range(opts.workers):
            procs.start_worker(i)
        procs.start_reconciler()
        procs.start_intake()
        poison = poison_messages(EVENT_KEY.encode(), user=subjects[0])
        poisoned = False

        started = time.monotonic()
        ids: list[str] = []
        restarts_at = sorted(rng.uniform(0.2, 0.7) for _ in range(opts.redis_restarts))
        cut_at: float | None = rng.uniform(0.3, 0.6)
        events: list[str] = []
        next_kill = started + opts.kill_every
        pending = list(subjects)
        while True:
            now = time.monotonic()
            if pending:  # submit in slices while the chaos goes on
                for u in pending[:25]:
                    ids.append(lethe.submit({"user_id": u}, actor="chaos")[0])
                pending = pending[25:]
            with lethe.ledger.engine.connect() as conn:
                done = conn.execute(text("SELECT count(*) FROM requests WHERE status = 'completed'")).scalar() or 0
            progress = done / opts.requests  # faults are spread over the run, not only its start
            if restarts_at and progress >= restarts_at[0]:
                restarts_at.pop(0)
                redis.restart()
                events.append(f"redis restarted at {now - started:.0f}s")
            if cut_at is not None and progress >= cut_at:
                cut = cut_ledger_connections(db_name)
                events.append(f"{cut} ledger connections cut at {now - started:.0f}s")
                cut_at = None
            if not restarts_at and not poisoned:  # after the restarts: a non-persistent broker would lose them
                publish_raw(redis.url, list(poison))
                events.append(f"{len(poison)} poison messages at {now - started:.0f}s")
                poisoned = True
            if now >= next_kill:
                procs.kill_random_worker(rng)
                next_kill = now + rng.uniform(0.5, 1.5) * opts.kill_every
            if not pending:
                page = lethe.ledger.list_requests(limit=1000)
                statuses = [i["status"] for i in page["items"]]
                open_ = sum(1 for st in statuses if st not in ("completed", "failed", "cancelled"))
                if len(statuses) >= len(ids) and open_ == 0:
                    break
            if now - started > opts.time_limit:
                events.append("time limit reached")
                break
            time.sleep(0.5)
        drained = time.monotonic() - started
        dead = dead_letters(redis.url, len(poison) if poisoned else 0, timeout=60)
        procs.stop_all()

        after = versions_per_owner(endpoint, "chaos-photos")
        with lethe.ledger.engine.connect() as conn:
            completed = conn.execute(text("SELECT count(*) FROM requests WHERE status = 'completed'")).scalar() or 0
            failed = conn.execute(text("SELECT count(*) FROM requests WHERE status = 'failed'")).scalar() or 0
            duplicates = conn.execute(text("SELECT count(*) FROM (SELECT request_id, target FROM completion_records "
                                           "GROUP BY request_id, target HAVING count(*) > 1) d")).scalar() or 0
            max_attempts = conn.execute(text("SELECT max(attempts) FROM tasks")).scalar() or 0
            requests = conn.execute(text("SELECT count(*) FROM requests")).scalar() or 0
        problems = lethe.ledger.verify()
        lethe.ledger.engine.dispose()
    figures = {
        "completed": completed, "requests": opts.requests, "failed": failed, "lost": opts.requests - completed - failed,
        "duplicate_records": duplicates,
        "bystander_versions_deleted": sum(before[u] - after[u] for u in bystanders),
        "subject_residue": sum(after[u] for u in subjects),
        "max_attempts": max_attempts, "drain_seconds": round(drained, 1), "worker_kills": procs.kills,
        "s3_faults": dict(proxy.injected), "events": events, "ledger_problems": problems[:3],
        "poison": len(poison), "poison_dead_lettered": sum(1 for pair in dead if pair in poison.items()),
        "filed_from_poison": requests - len(ids),
    }
    out.write(f"chaos: completed {completed}/{opts.requests}, failed {failed}, lost {figures['lost']}, "
              f"duplicate records {duplicates}, bystander versions deleted {figures['bystander_versions_deleted']}, "
              f"subject residue {figures['subject_residue']}, max attempts {max_attempts}, "
              f"drained in {drained:.0f} s; {procs.kills} worker kills, S3 faults {dict(proxy.injected)}, "
              f"{'; '.join(events)}; ledger {'verified' if not problems else problems[0]}; poison dead-lettered "
              f"{figures['poison_dead_lettered']}/{len(poison)}, filed from poison {figures['filed_from_poison']}\n")
    return figures


def ok(figures: dict[str, Any]) -> bool:
    return (figures["completed"] == figures["requests"] and figures["duplicate_records"] == 0
            and figures["bystander_versions_deleted"] == 0 and figures["subject_residue"] == 0
            and not figures["ledger_problems"] and figures["poison_dead_lettered"] == figures["poison"]
            and figures["filed_from_poison"] == 0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="make chaos")
    defaults = Options()
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--objects", type=int, default=defaults.objects)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every)
    parser.add_argument("--redis-restarts", type=int, default=defaults.redis_restarts)
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit)
    args = parser.parse_args()
    logs.configure(level="WARNING")
    figures = run(Options(requests=args.requests, objects=args.objects, workers=args.workers,
                          fault_rate=args.fault_rate, kill_every=args.kill_every,
                          redis_restarts=args.redis_restarts, time_limit=args.time_limit))
    sys.exit(0 if ok(figures) else 1)


if __name__ == "__main__":
    main()
