"""``lethe hold``: legal holds. A held subject's requests wait on_hold and nothing of theirs is deleted."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.common import make_lethe, out, parse_subject, user_errors
from orchestrator.times import parse_time

app = typer.Typer(name="hold", help="Legal holds: a held subject's data is not deleted.", no_args_is_help=True)


@app.command("add")
def hold_add(
    subject: Annotated[list[str], typer.Option("--subject", help="KIND=VALUE; repeat for several.")],
    reason: Annotated[str, typer.Option(help="The legal ground, e.g. litigation hold case 2026-17.")],
    until: Annotated[str | None, typer.Option(
        help="When the hold ends by itself: ISO 8601 date or time, with an offset or UTC.")] = None,
) -> None:
    """Place a legal hold: the subject's requests wait on_hold and nothing of theirs is deleted."""
    lethe = make_lethe()
    with user_errors():
        ends = parse_time(until) if until is not None else None
        lethe.add_hold(parse_subject(subject), reason, ends, actor="cli")
    out.print("hold placed" + (f" until {ends.isoformat()}" if ends else ""))


@app.command("release")
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


@app.command("list")
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
