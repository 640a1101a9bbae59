"""``lethe submit``: file erasure requests, for one subject, a file of subjects, or a whole dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer

from orchestrator.cli.common import (
    BROKER_ENV,
    LEDGER_ENV,
    MAP_ENV,
    Commands,
    Exit,
    actor,
    dispatching,
    err,
    exit_code,
    exit_filed,
    fail,
    identifier_lines,
    make_lethe,
    out,
    parse_subject,
    print_tasks,
    progress_bars,
    reads,
    wait_for_many,
    wait_with_progress,
    warn_not_dispatched,
)
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.ledger import LedgerError, stored_idempotency_key
from orchestrator.service import Lethe

app = Commands()


@app.command(epilog=reads(MAP_ENV, LEDGER_ENV, BROKER_ENV))
def submit(
    subject: Annotated[list[str] | None, typer.Option(
        "--subject", metavar="KIND=VALUE", help="An identifier of the subject; repeat for several.")] = None,
    dataset: Annotated[str | None, typer.Option(
        metavar="NAME", help="Erase a whole data source declared under datasets: in the map (an admin approves).")
    ] = None,
    subjects_file: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Bulk erasure: one identifier value per line, one request each; every line is "
        "checked before anything is filed.", exists=True, dir_okay=False)] = None,
    identifier: Annotated[str, typer.Option(metavar="KIND", help="With --subjects-file: the identifier kind of "
                                            "its lines.")] = "user_id",
    idempotency_key: Annotated[str | None, typer.Option(
        metavar="KEY", help="Submitting again with this key returns the same request.")] = None,
    regime: Annotated[Literal["gdpr", "ccpa"], typer.Option(help="Deadline: gdpr one month, ccpa 45 days.")] = "gdpr",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the request to finish (exit 0, 1 or 3).")] = False,
    timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS", help="With --wait: give up after this long (exit 3).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status object (with --subjects-file: each "
                                          "line's request id and the count per status).")] = False,
) -> None:
    """File an erasure request: one subject, a file of subjects, or a whole data source.

    Prints the request's id (bulk: LINE<tab>ID per line). With a broker URL the broker must answer first
    (exit 4, nothing filed); a task it did not take afterwards is named on stderr (exit 4) and `lethe
    reconcile` sends it on its next pass."""
    if sum(map(bool, (subject, dataset, subjects_file))) != 1:
        fail("give one of --subject KIND=VALUE (one subject), --subjects-file F (one request per line) "
             "or --dataset NAME (a whole source)")
    lethe = make_lethe()
    if subjects_file is not None:
        if idempotency_key is not None:
            fail("--idempotency-key is for one request; a bulk erasure files one request per line")
        submit_bulk(lethe, subjects_file, identifier, dry_run=dry_run, regime=regime, wait=wait, timeout=timeout,
                    as_json=as_json)
    raw = parse_subject(subject or [])
    datamap = lethe.load_map()  # refuse bad input before anything starts
    if dataset is None:
        datamap.parse_subject(raw)
    elif dataset not in datamap.datasets:
        raise LedgerError(f"unknown dataset {dataset!r} (the data map declares: "
                          f"{', '.join(sorted(datamap.datasets)) or 'none'})")
    key = None if idempotency_key is None else stored_idempotency_key("cli", idempotency_key)
    # Embedded mode: the in-process broker and worker live only as long as this command, so it waits.
    with dispatching(lethe):
        request_id, _created = lethe.submit(raw, dry_run=dry_run, regime=regime, datamap=datamap,
                                            idempotency_key=key, actor=actor(), dataset=dataset)
        if not (wait or lethe.settings.embedded):
            status = lethe.ledger.status(request_id)
            out.print_json(json.dumps(status)) if as_json else out.print(request_id)
            warn_not_dispatched(status)
            raise typer.Exit(Exit.UNREACHABLE if status["not_dispatched"] else Exit.DONE)
        status = wait_with_progress(lethe, request_id, timeout)
    if as_json:
        out.print_json(json.dumps(status))
    else:
        out.print(request_id)
        print_tasks(status, err)
    warn_not_dispatched(status)
    code = exit_code(status)
    if code == Exit.WAITING and timeout is not None:
        err.print(f"still {status['status']} after {timeout:g} s")
    raise typer.Exit(code)


def submit_bulk(lethe: Lethe, path: Path, identifier: str, *, dry_run: bool, regime: str, wait: bool,
                timeout: float | None, as_json: bool) -> NoReturn:
    """File one request per line of ``path``; every line is checked first, so one bad line files nothing.
    Prints ``LINE<tab>ID`` per filed line (``--json``: ``lines``, the same as objects)."""
    datamap = lethe.load_map()
    lines = list(identifier_lines(path, identifier, datamap, lambda value: dict(
        datamap.parse_subject({identifier: value}))))
    if not lines:
        raise InvalidIdentifier(f"{path.name} holds no identifier")
    with dispatching(lethe), progress_bars() as progress:
        filing = progress.add_task("filed", total=len(lines))
        request_ids = lethe.submit_many([subject for _, subject in lines], dry_run=dry_run, regime=regime,
                                        datamap=datamap, actor=actor(),
                                        on_progress=lambda n: progress.update(filing, completed=n))
        counts = wait_for_many(lethe, progress, request_ids, timeout) if wait or lethe.settings.embedded else {}
    not_dispatched = lethe.ledger.not_dispatched_count(request_ids) if not lethe.settings.embedded else 0
    filed: list[dict[str, Any]] = [{"line": number, "id": rid} for (number, _), rid in zip(lines, request_ids,
                                                                                            strict=True)]
    if as_json:
        out.print_json(json.dumps({"requests": request_ids, "lines": filed, "statuses": counts,
                                   "not_dispatched": not_dispatched}))
    else:
        typer.echo("\n".join(f"{item['line']}\t{item['id']}" for item in filed))  # raw: rich expands tabs
        if counts:
            err.print(", ".join(f"{n:,} {st}" for st, n in sorted(counts.items())))
    exit_filed(request_ids, counts, not_dispatched)
