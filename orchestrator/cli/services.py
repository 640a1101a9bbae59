"""The long-running parts of a deployment (worker, intake, reconcile, api) and the schema they need (migrate)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Annotated

import typer

from orchestrator import logs
from orchestrator.cli.common import err, fail, make_lethe, out, user_errors

app = typer.Typer()


@app.command()
def worker(
    queues: Annotated[str | None, typer.Option("-Q", "--queues", help="Comma-separated; default all.")] = None,
    concurrency: Annotated[int, typer.Option("-c", "--concurrency", min=1)] = 2,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Run a Celery worker (needs LETHE_BROKER_URL)."""
    lethe = make_lethe()
    if lethe.settings.embedded:
        fail("lethe worker needs LETHE_BROKER_URL (redis://… or amqp://…)")
    logs.configure(level=loglevel)
    with user_errors():
        lethe.ledger  # noqa: B018 - migrate before forking
    from workers.app import CONTROL_QUEUE, purge_queues

    argv = ["worker", "-Q", queues or ",".join([*purge_queues(), CONTROL_QUEUE]), "-c", str(concurrency),
            "--loglevel", loglevel, "--without-mingle", "--without-gossip"]
    lethe.app.worker_main(argv)


@app.command()
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
    logs.configure(level=lethe.settings.log_level)
    with user_errors():
        lethe.ledger  # noqa: B018 - migrate
        lethe.load_map()
    assert lethe.settings.broker_url is not None
    with Connection(lethe.settings.broker_url) as connection:
        declare(connection)
        Intake(lethe, connection, key).run()


@app.command()
def reconcile(
    loop: Annotated[float | None, typer.Option(help="Repeat every SECONDS until interrupted.")] = None,
) -> None:
    """Re-dispatch non-terminal tasks past their lease."""
    lethe = make_lethe()
    with user_errors():
        while True:
            sent = lethe.reconcile()
            out.print(f"re-dispatched {sent} task(s)")
            if loop is None:
                return
            time.sleep(loop)


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API and the operators' dashboard (uvicorn)."""
    import uvicorn

    from orchestrator.api import create_app

    lethe = make_lethe()
    with user_errors():
        lethe.ledger  # noqa: B018 - migrate before serving
        web = create_app(lethe)
    if lethe.settings.api_tokens is None:
        err.print("[yellow]warning:[/yellow] LETHE_API_TOKENS is not set: every API call and sign-in is refused")
    # Embedded mode: requests filed through the API are run by an in-process worker while the server lives.
    with lethe.embedded_worker() if lethe.settings.embedded else nullcontext():
        logs.configure(level=lethe.settings.log_level)  # after the worker, which sets up logging its own way
        uvicorn.run(web, host=host, port=port, log_config=None, server_header=False)


@app.command()
def migrate() -> None:
    """Bring the ledger schema up to date and declare the broker's queues."""
    lethe = make_lethe()
    with user_errors():
        lethe.ledger  # noqa: B018 - migrates
    if not lethe.settings.embedded:
        from workers.app import declare_queues

        declare_queues(lethe.app)
    out.print("ledger is up to date" + ("" if lethe.settings.embedded else "; queues declared"))
