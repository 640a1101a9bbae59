"""The long-running parts of a deployment (worker, intake, reconcile, api) and the schema they need (migrate)."""

from __future__ import annotations

import socket
import time
from typing import Annotated

import typer

from orchestrator import logs
from orchestrator.cli.common import (
    BROKER_ENV,
    LEDGER_ENV,
    MAP_ENV,
    Commands,
    dispatching,
    err,
    fail,
    make_lethe,
    out,
    reads,
)
from orchestrator.config import ConfigError

app = Commands()
RUN_ENV = ("LETHE_TASK_LEASE_SECONDS", "LETHE_TASK_SLICE_SECONDS", "LETHE_TASK_MAX_RETRIES", "LETHE_LOG_LEVEL")
RETENTION_ENV = ("LETHE_TOMBSTONE_DAYS", "LETHE_RECORD_RETENTION_DAYS")


@app.command(epilog=reads(BROKER_ENV, LEDGER_ENV, MAP_ENV, RUN_ENV))
def worker(
    queues: Annotated[str | None, typer.Option("-Q", "--queues", metavar="QUEUES",
                                               help="Comma-separated queues to consume; default all.")] = None,
    concurrency: Annotated[int, typer.Option("-c", "--concurrency", min=1, metavar="N",
                                             help="Worker processes.")] = 2,
    loglevel: Annotated[str, typer.Option(metavar="LEVEL", help="Log level (DEBUG, INFO, WARNING, ERROR).")] = "INFO",
) -> None:
    """Run a Celery worker (needs LETHE_BROKER_URL)."""
    lethe = make_lethe()  # migrated before forking
    if lethe.settings.embedded:
        fail("lethe worker needs LETHE_BROKER_URL (redis://… or amqp://…)")
    logs.configure(level=loglevel)
    from workers.app import CONTROL_QUEUE, purge_queues

    argv = ["worker", "-Q", queues or ",".join([*purge_queues(), CONTROL_QUEUE]), "-c", str(concurrency),
            "--loglevel", loglevel, "--without-mingle", "--without-gossip"]
    lethe.app.worker_main(argv)


@app.command(epilog=reads(BROKER_ENV, ("LETHE_EVENT_KEY", "LETHE_EVENT_MAX_AGE_DAYS"), LEDGER_ENV, MAP_ENV,
                          ("LETHE_LOG_LEVEL",)))
def intake() -> None:
    """Consume signed platform events from lethe.events (needs LETHE_BROKER_URL and LETHE_EVENT_KEY)."""
    from kombu import Connection

    from orchestrator.events import declare
    from orchestrator.intake import Intake

    lethe = make_lethe()
    if lethe.settings.embedded:
        fail("lethe intake needs LETHE_BROKER_URL (redis://… or amqp://…)")
    key = lethe.event_key
    if not key:
        fail("lethe intake needs LETHE_EVENT_KEY, the HMAC secret platform events are signed with")
    lethe.load_map()
    lethe.check_broker()
    logs.configure(level=lethe.settings.log_level)
    assert lethe.settings.broker_url is not None
    with Connection(lethe.settings.broker_url) as connection:
        declare(connection)
        Intake(lethe, connection, key).run()


@app.command(epilog=reads(LEDGER_ENV, BROKER_ENV, MAP_ENV, ("LETHE_TASK_LEASE_SECONDS", "LETHE_WATCH_ITEMS"),
                          RETENTION_ENV))
def reconcile(
    loop: Annotated[float | None, typer.Option(metavar="SECONDS", help="Repeat every SECONDS until "
                                               "interrupted.")] = None,
) -> None:
    """Re-send tasks past their lease or not dispatched; publish events; prune old records; and watch for
    resurrections: read the next LETHE_WATCH_ITEMS entries of each scannable target and file a follow-up
    for erased data found again."""
    from orchestrator.watch import Watch

    lethe = make_lethe()
    watch = Watch(lethe)  # its place in each store lives in this process only
    while True:
        sent = lethe.reconcile()
        found = sum(t.filed for t in watch.run().values())
        out.print(f"re-dispatched {sent} task(s)" + (f"; filed {found} follow-up(s) for erased data found "
                                                     "again" if found else ""))
        if loop is None:
            return
        time.sleep(loop)


@app.command(epilog=reads(LEDGER_ENV, BROKER_ENV, MAP_ENV, ("LETHE_API_TOKENS", "LETHE_LOG_LEVEL")))
def api(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, metavar="PORT", help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API and the operators' dashboard (uvicorn). Exit 2 if the port is taken."""
    import uvicorn

    from orchestrator.api import create_app

    lethe = make_lethe()
    web = create_app(lethe)
    listening = listen(host, port)  # before the worker starts: a taken port is one line, not a worker's shutdown
    if lethe.settings.api_tokens is None:
        err.print("[yellow]warning:[/yellow] LETHE_API_TOKENS is not set: every API call and sign-in is refused")
    # Embedded mode: requests filed through the API are run by an in-process worker while the server lives.
    with listening, dispatching(lethe, check_broker=False):  # the API files while the broker is down
        logs.configure(level=lethe.settings.log_level)  # after the worker, which sets up logging its own way
        server = uvicorn.Server(uvicorn.Config(web, host=host, port=port, log_config=None, server_header=False))
        err.print(f"listening on http://{host}:{port}/ (dashboard) and /v1 (API)", highlight=False)
        server.run(sockets=[listening])


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a taken or unusable address is a ConfigError naming it."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what listens there or "
                          "give another --port / --host") from None


@app.command(epilog=reads(LEDGER_ENV, BROKER_ENV))
def migrate() -> None:
    """Bring the ledger schema up to date and declare the broker's queues (exit 4 if either is unreachable)."""
    lethe = make_lethe()
    if not lethe.settings.embedded:
        from workers.app import declare_queues

        with dispatching(lethe):
            declare_queues(lethe.app)
    out.print("ledger is up to date" + ("" if lethe.settings.embedded else "; queues declared"))
