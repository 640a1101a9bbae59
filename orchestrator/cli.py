"""The ``lethe`` command. Exit codes (SPEC): 0 done, 1 failed or cancelled, 2 bad input, 3 waiting/timeout."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import logs
from orchestrator.config import ConfigError, Settings
from orchestrator.datamap import DataMap, DataMapError
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.ledger.store import TERMINAL_REQUEST, TERMINAL_TASK, LedgerError
from orchestrator.service import WAITING_REQUEST, Lethe
from workers.targets.base import UnknownTargetKind

app = typer.Typer(name="lethe", help="Erase a data subject everywhere, verify it, and prove it.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are read by scripts too: no hard wraps

T = TypeVar("T")
USER_ERRORS = (InvalidIdentifier, DataMapError, LedgerError, ConfigError, UnknownTargetKind)


class Exit:
    DONE, FAILED, BAD_INPUT, WAITING = 0, 1, 2, 3


def fail(message: str, code: int = Exit.BAD_INPUT) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake is a message and exit 2, never a traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc))


def make_lethe() -> Lethe:
    with user_errors():
        settings = Settings()
        logs.configure(level="WARNING")
        return Lethe(settings)


def exit_code(status: dict[str, Any]) -> int:
    if status["status"] == "completed":
        return Exit.DONE
    if status["status"] in ("failed", "cancelled"):
        return Exit.FAILED
    return Exit.WAITING


def parse_subject(pairs: list[str]) -> dict[str, str]:
    subject: dict[str, str] = {}
    for pair in pairs:
        kind, sep, value = pair.partition("=")
        if not sep:
            fail(f"--subject takes KIND=VALUE (got {len(pair)} characters without '=')")
        if kind in subject:
            fail(f"--subject {kind} given twice")
        subject[kind] = value
    return subject


@app.command()
def submit(
    subject: Annotated[list[str] | None, typer.Option("--subject", help="KIND=VALUE; repeat for several.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Erase a whole data source declared under datasets:.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Replays with this key return the same request.")] = None,
    regime: Annotated[str, typer.Option(help="gdpr (one month) or ccpa (45 days).")] = "gdpr",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the request to finish.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after S seconds (exit 3).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status object.")] = False,
    subjects_file: Annotated[Path | None, typer.Option(
        help="Bulk erasure: one identifier value per line, one request each.", exists=True, dir_okay=False)] = None,
    identifier: Annotated[str, typer.Option(help="With --subjects-file: the identifier kind.")] = "user_id",
) -> None:
    """File an erasure request for one subject, for every subject in a file (--subjects-file), or (--dataset)
    for a whole data source."""
    if sum(map(bool, (subject, dataset, subjects_file))) != 1:
        fail("give one of --subject KIND=VALUE (one subject), --subjects-file F (one request per line) "
             "or --dataset NAME (a whole source)")
    if regime not in ("gdpr", "ccpa"):
        fail(f"--regime must be gdpr or ccpa, not {regime!r}")
    lethe = make_lethe()
    if subjects_file is not None:
        if idempotency_key is not None:
            fail("--idempotency-key is for one request; a bulk erasure files one request per line")
        submit_bulk(lethe, subjects_file, identifier, dry_run=dry_run, regime=regime, wait=wait, timeout=timeout,
                    as_json=as_json)
    raw = parse_subject(subject or [])
    with user_errors():  # refuse bad input before anything starts
        datamap = lethe.load_map()
        if dataset is None:
            datamap.parse_subject(raw)
        elif dataset not in datamap.datasets:
            raise LedgerError(f"unknown dataset {dataset!r} (the data map declares: "
                              f"{', '.join(sorted(datamap.datasets)) or 'none'})")
        lethe.ledger  # noqa: B018 - migrate
    # Embedded mode: the in-process broker and worker live only as long as this command, so it waits.
    embedded = lethe.settings.embedded
    with user_errors(), lethe.embedded_worker() if embedded else nullcontext():
        request_id, _created = lethe.submit(raw, dry_run=dry_run, regime=regime, datamap=datamap,
                                            idempotency_key=idempotency_key, actor="cli", dataset=dataset)
        if not (wait or embedded):
            status = lethe.ledger.status(request_id)
            out.print_json(json.dumps(status)) if as_json else out.print(request_id)
            raise typer.Exit(Exit.DONE)
        status = wait_with_progress(lethe, request_id, timeout)
    if as_json:
        out.print_json(json.dumps(status))
    else:
        out.print(request_id)
        print_tasks(status, err)
    code = exit_code(status)
    if code == Exit.WAITING and timeout is not None:
        err.print(f"still {status['status']} after {timeout:g} s")
    raise typer.Exit(code)


def identifier_values(path: Path, identifier: str, datamap: DataMap, convert: Callable[[str], T]) -> Iterator[T]:
    """``convert(value)`` for every non-empty line of ``path``, one value of ``identifier`` per line, read as
    the result is iterated; an invalid value raises InvalidIdentifier naming its line. The kind is checked now."""
    if identifier not in datamap.identifiers:
        raise InvalidIdentifier(f"unknown identifier kind {identifier!r}")

    def values() -> Iterator[T]:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                value = line.rstrip("\r\n")
                if not value:
                    continue
                try:
                    yield convert(value)
                except InvalidIdentifier as exc:
                    raise InvalidIdentifier(f"{path.name} line {number}: {exc}") from None

    return values()


def submit_bulk(lethe: Lethe, path: Path, identifier: str, *, dry_run: bool, regime: str, wait: bool,
                timeout: float | None, as_json: bool) -> NoReturn:
    """File one request per line of ``path``; every line is checked first, so one bad line files nothing."""
    with user_errors():
        datamap = lethe.load_map()
        subjects = list(identifier_values(path, identifier, datamap, lambda value: dict(
            datamap.parse_subject({identifier: value}))))
        if not subjects:
            raise InvalidIdentifier(f"{path.name} holds no identifier")
        lethe.ledger  # noqa: B018 - migrate
    embedded = lethe.settings.embedded
    columns = (TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with user_errors(), lethe.embedded_worker() if embedded else nullcontext(), \
            Progress(*columns, console=err, disable=not err.is_terminal) as progress:
        filing = progress.add_task("filed", total=len(subjects))
        request_ids = lethe.submit_many(subjects, dry_run=dry_run, regime=regime, datamap=datamap,
                                        on_progress=lambda n: progress.update(filing, completed=n))
        counts: dict[str, int] = {}
        if wait or embedded:
            finished = progress.add_task("finished", total=len(request_ids))
            counts = lethe.wait_many(request_ids, timeout=timeout, on_progress=lambda c: progress.update(
                finished, completed=sum(n for st, n in c.items() if st in TERMINAL_REQUEST | WAITING_REQUEST)))
    if as_json:
        out.print_json(json.dumps({"requests": request_ids, "statuses": counts}))
    else:
        out.print("\n".join(request_ids))
        if counts:
            err.print(", ".join(f"{n:,} {st}" for st, n in sorted(counts.items())))
    if not counts:
        raise typer.Exit(Exit.DONE)
    if counts.get("failed") or counts.get("cancelled"):
        raise typer.Exit(Exit.FAILED)
    raise typer.Exit(Exit.DONE if counts.get("completed", 0) == len(request_ids) else Exit.WAITING)


def wait_with_progress(lethe: Lethe, request_id: str, timeout: float | None) -> dict[str, Any]:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        bar = progress.add_task("erasing", total=None)

        def update(status: dict[str, Any]) -> None:
            tasks = status["tasks"]
            done = sum(1 for t in tasks if t["status"] in TERMINAL_TASK)
            items = [t["progress"] for t in tasks if t["status"] == "running" and t.get("progress")]
            detail = "".join(f" · {p['done'] or 0:,}/{p['estimated'] or '?'} items" for p in items)
            progress.update(bar, total=len(tasks), completed=done, description=status["status"] + detail)

        return lethe.wait(request_id, timeout=timeout, on_progress=update)


def print_tasks(status: dict[str, Any], console: Console) -> None:
    table = Table(title=f"request {status['id']}: {status['status']}"
                  + (" (dry run)" if status["dry_run"] else ""), title_justify="left")
    for col in ("target", "kind", "status", "deleted", "residue", "attempts", "error / reason"):
        table.add_column(col)
    for t in status["tasks"]:
        table.add_row(t["target"], t["kind"], t["status"], str(t["deleted"] if t["deleted"] is not None else "-"),
                      str(t["residue"] if t["residue"] is not None else "-"), str(t["attempts"]),
                      t["error"] or t["reason"] or "")
    console.print(table)


@app.command()
def status(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a request's status."""
    lethe = make_lethe()
    with user_errors():
        st = lethe.ledger.status(request_id)
    if as_json:
        out.print_json(json.dumps(st))
    else:
        out.print(f"due {st['due_at']}  received {st['received_at']}  completed {st['completed_at'] or '-'}")
        print_tasks(st, out)
    code = exit_code(st)
    raise typer.Exit(Exit.DONE if code == Exit.WAITING and st["status"] not in WAITING_REQUEST else code)


@app.command("list")
def list_requests(
    status: Annotated[str | None, typer.Option(help="Only requests with this status.")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only unfinished requests past due.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List requests, newest first."""
    lethe = make_lethe()
    with user_errors():
        page = lethe.ledger.list_requests(status=status, overdue=overdue, limit=limit)
    if as_json:
        out.print_json(json.dumps(page))
        return
    table = Table()
    for col in ("id", "status", "received", "due", "targets done"):
        table.add_column(col)
    for item in page["items"]:
        done = sum(1 for t in item["tasks"] if t["status"] in TERMINAL_TASK)
        table.add_row(item["id"], item["status"], item["received_at"], item["due_at"],
                      f"{done}/{len(item['tasks'])}")
    out.print(table)


@app.command()
def retry(request_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Move a request's failed tasks back to pending and dispatch them."""
    lethe = make_lethe()
    with user_errors(), lethe.embedded_worker() if lethe.settings.embedded else nullcontext():
        lethe.retry(request_id)
        if lethe.settings.embedded:
            raise typer.Exit(exit_code(wait_with_progress(lethe, request_id, None)))
    out.print(f"retrying failed tasks of {request_id}")


@app.command()
def cancel(request_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Cancel a request that has not started executing."""
    lethe = make_lethe()
    with user_errors():
        lethe.cancel(request_id)
    out.print(f"cancelled {request_id}")


@app.command()
def certificate(
    request_id: Annotated[str | None, typer.Argument(metavar="ID", help="A completed request.")] = None,
    public_key: Annotated[bool, typer.Option("--public-key", help="Print the public key (PEM) instead.")] = False,
) -> None:
    """Print a completed request's signed certificate, or the key that verifies certificates."""
    if (request_id is None) == (not public_key):
        fail("give a request ID or --public-key")
    lethe = make_lethe()
    with user_errors():
        if public_key:
            sys.stdout.write(lethe.ledger.public_key_pem())
            return
        assert request_id is not None
        cert = lethe.ledger.certificate(request_id)
    sys.stdout.write(json.dumps(cert, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@app.command("verify-ledger")
def verify_ledger() -> None:
    """Check the audit chain, completion records and certificates; exit 1 naming the first bad entry."""
    lethe = make_lethe()
    with user_errors():
        problems = lethe.ledger.verify()
    if problems:
        err.print(f"[red]ledger verification failed:[/red] {problems[0]}", highlight=False)
        for problem in problems[1:20]:
            err.print(f"  also: {problem}", highlight=False)
        raise typer.Exit(Exit.FAILED)
    out.print("ledger verified: audit chain, completion records and certificates are intact")


@app.command()
def approve(request_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Let a request waiting on a target's max_items go ahead (admin)."""
    lethe = make_lethe()
    with user_errors(), lethe.embedded_worker() if lethe.settings.embedded else nullcontext():
        lethe.approve(request_id, actor="cli:admin")
        if lethe.settings.embedded:
            raise typer.Exit(exit_code(wait_with_progress(lethe, request_id, None)))
    out.print(f"approved {request_id}")


@app.command()
def extend(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option(help="Why more time is needed (kept in the audit trail).")],
) -> None:
    """Extend a request's deadline once: GDPR two more months, CCPA 45 more days."""
    lethe = make_lethe()
    with user_errors():
        due = lethe.ledger.extend_deadline(request_id, reason)
    out.print(f"{request_id} is now due {due}")


hold_app = typer.Typer(help="Legal holds: a held subject's data is not deleted.", no_args_is_help=True)
app.add_typer(hold_app, name="hold")


@hold_app.command("add")
def hold_add(
    subject: Annotated[list[str], typer.Option("--subject", help="KIND=VALUE; repeat for several.")],
    reason: Annotated[str, typer.Option(help="The legal ground, e.g. litigation hold case 2026-17.")],
    until: Annotated[datetime | None, typer.Option(help="Date the hold ends by itself (UTC).")] = None,
) -> None:
    """Place a legal hold: the subject's requests wait on_hold and nothing of theirs is deleted."""
    lethe = make_lethe()
    with user_errors():
        ends = until.replace(tzinfo=until.tzinfo or UTC) if until else None
        lethe.add_hold(parse_subject(subject), reason, ends, actor="cli")
    out.print("hold placed" + (f" until {ends.isoformat()}" if ends else ""))


@hold_app.command("release")
def hold_release(
    subject: Annotated[list[str], typer.Option("--subject", help="KIND=VALUE; repeat for several.")],
) -> None:
    """Release a subject's holds; their waiting requests resume."""
    lethe = make_lethe()
    with user_errors(), lethe.embedded_worker() if lethe.settings.embedded else nullcontext():
        lethe.release_hold(parse_subject(subject), actor="cli")
        if lethe.settings.embedded:
            for item in lethe.ledger.list_requests(status="running")["items"]:
                lethe.wait(item["id"])
    out.print("hold released")


@hold_app.command("list")
def hold_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Active holds (subjects shown as keyed hashes)."""
    lethe = make_lethe()
    with user_errors():
        holds = lethe.ledger.list_holds()
    if as_json:
        out.print_json(json.dumps({"items": holds}))
        return
    table = Table()
    for col in ("subject hash", "reason", "until", "since", "by"):
        table.add_column(col)
    for h in holds:
        table.add_row(h["subject_hash"][:16] + "…", h["reason"], h["until"] or "-", h["created_at"], h["created_by"])
    out.print(table)


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

    from orchestrator.events import Intake, declare

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


@app.command("check-map")
def check_map(
    path: Annotated[Path | None, typer.Argument(help="Data map YAML (default: LETHE_DATA_MAP).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Every declared store needs a target or reason.")] = False,
) -> None:
    """Validate a data map and print the plan shape."""
    with user_errors():
        datamap = DataMap.load(path or Settings().data_map)
    problems = datamap.strict_problems() if strict else []
    table = Table(title=f"data map {datamap.digest[:12]}: {len(datamap.targets)} targets", title_justify="left")
    for col in ("#", "target", "kind", "after", "needs"):
        table.add_column(col)
    for i, t in enumerate(datamap.targets, 1):
        table.add_row(str(i), t.name, t.kind, ", ".join(t.after) or "-",
                      ", ".join(sorted(t.required_identifiers())) or "-")
    out.print(table)
    for s in datamap.stores:
        if s.not_erased:
            out.print(f"not erased: {s.name}: {s.not_erased}")
    if problems:
        fail("\n".join(problems))


lineage_app = typer.Typer(help="Model lineage: which subjects a training dataset holds.", no_args_is_help=True)
app.add_typer(lineage_app, name="lineage")


@lineage_app.command("record")
def lineage_record(
    dataset_name: Annotated[str, typer.Option(help="Dataset name, as logged with mlflow.log_input.")],
    dataset_digest: Annotated[str, typer.Option(help="Dataset digest, as logged with mlflow.log_input.")],
    subjects_file: Annotated[Path, typer.Option(help="One identifier value per line.", exists=True, dir_okay=False)],
    identifier: Annotated[str, typer.Option(help="Identifier kind of the values.")] = "user_id",
) -> None:
    """Record the subjects a training dataset holds, as keyed hashes (the raw values are not kept)."""
    from orchestrator.identifiers import keyed_hash, normalise_value

    lethe = make_lethe()
    with user_errors():
        datamap = lethe.load_map()
        key = lethe.settings.subject_key_bytes
        hashes = identifier_values(subjects_file, identifier, datamap, lambda value: keyed_hash(
            key, identifier, normalise_value(identifier, value, datamap.identifiers[identifier])))
        ledger = lethe.ledger

    with Progress(TextColumn("recording"), TextColumn("{task.completed:,} subjects"), TimeElapsedColumn(),
                  console=err, disable=not err.is_terminal) as progress, user_errors():
        bar = progress.add_task("recording", total=None)
        count = ledger.record_lineage(dataset_name, dataset_digest, hashes, actor="cli",
                                      on_progress=lambda n: progress.update(bar, completed=n))
    out.print(f"recorded {count:,} subjects in dataset {dataset_name} ({dataset_digest})")


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


@app.command()
def demo(
    subjects: Annotated[int, typer.Option(min=2, max=5000, help="Synthetic users to create.")] = 200,
    erase: Annotated[int, typer.Option(min=1, help="How many of them to erase.")] = 5,
    workdir: Annotated[Path, typer.Option(help="Where the demo's ledger and stores live.")] = Path(".lethe-demo"),
) -> None:
    """Build a synthetic estate on embedded stores and erase some subjects through the real pipeline."""
    from orchestrator.demo import run_demo

    if erase >= subjects:
        fail("--erase must be smaller than --subjects (the rest prove nothing else is touched)")
    logs.configure(level="WARNING")
    raise typer.Exit(run_demo(subjects=subjects, erase=erase, workdir=workdir, console=out))


def main() -> None:
    try:
        app(prog_name="lethe")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
