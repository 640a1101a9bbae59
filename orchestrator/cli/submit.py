"""``lethe submit``: file erasure requests, for one subject, a file of subjects, or a whole dataset."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.cli.common import (
    Exit,
    err,
    exit_code,
    fail,
    identifier_values,
    make_lethe,
    out,
    parse_subject,
    print_tasks,
    user_errors,
    wait_with_progress,
)
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.ledger.store import TERMINAL_REQUEST, LedgerError, stored_idempotency_key
from orchestrator.service import WAITING_REQUEST, Lethe

app = typer.Typer()


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
        key = None if idempotency_key is None else stored_idempotency_key("cli", idempotency_key)
        request_id, _created = lethe.submit(raw, dry_run=dry_run, regime=regime, datamap=datamap,
                                            idempotency_key=key, actor="cli", dataset=dataset)
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
