"""``lethe hold``: legal holds. A held subject's requests wait on_hold and nothing of theirs is deleted."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.common import (
    BROKER_ENV,
    LEDGER_ENV,
    MAP_ENV,
    Commands,
    actor,
    dispatching,
    make_lethe,
    out,
    parse_subject,
    reads,
)
from orchestrator.times import parse_time

app = Commands(name="hold", help="Legal holds: a held subject's data is not deleted.")
Subject = Annotated[list[str], typer.Option("--subject", metavar="KIND=VALUE",
                                            help="An identifier of the subject; repeat for several.")]


@app.command("add", epilog=reads(MAP_ENV, LEDGER_ENV))
def hold_add(
    subject: Subject,
    reason: Annotated[str, typer.Option(help="The legal ground, e.g. litigation hold case 2026-17.")],
    until: Annotated[str | None, typer.Option(
        metavar="WHEN", help="When the hold ends by itself: ISO 8601 date or time, with an offset or UTC.")] = None,
) -> None:
    """Place a legal hold: the subject's requests wait on_hold and nothing of theirs is deleted."""
    lethe = make_lethe()
    ends = parse_time(until) if until is not None else None
    lethe.add_hold(parse_subject(subject), reason, ends, actor=actor())
    out.print("hold placed" + (f" until {ends.isoformat()}" if ends else ""))


@app.command("release", epilog=reads(MAP_ENV, LEDGER_ENV, BROKER_ENV))
def hold_release(subject: Subject) -> None:
    """Release a subject's holds; their waiting requests resume (embedded mode: and this waits for them)."""
    lethe = make_lethe()
    with dispatching(lethe):
        lethe.release_hold(parse_subject(subject), actor=actor())
        if lethe.settings.embedded:
            for item in lethe.ledger.list_requests(status="running")["items"]:
                lethe.wait(item["id"])
    out.print("hold released")


@app.command("list", epilog=reads(LEDGER_ENV))
def hold_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the holds as JSON (items).")] = False,
) -> None:
    """Active holds (subjects shown as keyed hashes)."""
    lethe = make_lethe()
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
