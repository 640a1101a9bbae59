"""Commands on filed requests: read them (status, list), act on them (retry, cancel, approve, extend)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.common import Exit, exit_code, make_lethe, out, print_tasks, user_errors, wait_with_progress
from orchestrator.ledger.store import TERMINAL_TASK
from orchestrator.service import WAITING_REQUEST

app = typer.Typer()


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
