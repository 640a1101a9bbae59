"""Commands on filed requests: read them (status, list), act on them (retry, cancel, approve, extend).

Every ID argument takes the whole id or any unique prefix of it, as git takes commits; ``lethe list``
shows each id as its shortest unique prefix."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.common import (
    BROKER_ENV,
    LEDGER_ENV,
    Commands,
    Exit,
    actor,
    dispatching,
    exit_code,
    fail,
    make_lethe,
    out,
    print_tasks,
    reads,
    request_id,
    targets_done,
    wait_with_progress,
    warn_not_dispatched,
)
from orchestrator.ledger import REQUEST_STATUSES, UnknownRequest
from orchestrator.service import WAITING_REQUEST

app = Commands()
ID_HELP = "The request's id, or any unique prefix of it (at least 4 characters)."
RequestId = Annotated[str, typer.Argument(metavar="ID", help=ID_HELP)]


@app.command(epilog=reads(LEDGER_ENV))
def status(
    given: Annotated[str | None, typer.Argument(metavar="ID", help=ID_HELP)] = None,
    event: Annotated[tuple[str, str] | None, typer.Option(
        metavar="SOURCE ID", help="Instead of an ID: the request a platform event (its CloudEvents source "
        "and id) made.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status object (SPEC).")] = False,
) -> None:
    """Show a request's status: its deadline and each target's outcome.

    Exit 0; 1 failed or cancelled; 3 waiting on a hold or an approval."""
    if (given is None) == (event is None):
        fail("give a request ID or --event SOURCE ID")
    lethe = make_lethe()
    if event is not None:
        from orchestrator.events import request_for_event

        found = request_for_event(lethe.ledger, *event)
        if found is None:
            raise UnknownRequest("no request was filed for that event (not received, dead-lettered, or past "
                                 "the 30-day dedupe window): see `lethe dead-letters list`")
        given = found
    assert given is not None
    st = lethe.ledger.status(request_id(lethe, given))
    if as_json:
        out.print_json(json.dumps(st))
    else:
        out.print(f"due {st['due_at']}  received {st['received_at']}  completed {st['completed_at'] or '-'}"
                  + (f"  gone by {st['gone_by']}" if st.get("gone_by") else ""))
        print_tasks(st, out)
    warn_not_dispatched(st)
    code = exit_code(st)
    raise typer.Exit(Exit.DONE if code == Exit.WAITING and st["status"] not in WAITING_REQUEST else code)


@app.command("list", epilog=reads(LEDGER_ENV))
def list_requests(
    status: Annotated[str | None, typer.Option(
        metavar="STATUS", help=f"Only requests with this status: {', '.join(REQUEST_STATUSES)}.")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only unfinished requests past due.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, metavar="N", help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the SPEC's page: items (status objects) and next.")] = False,
) -> None:
    """List requests, newest first.

    Ids are shown as their shortest unique prefix, which every command takes."""
    lethe = make_lethe()
    page = lethe.ledger.list_requests(status=status, overdue=overdue, limit=limit)
    if as_json:
        out.print_json(json.dumps(page))
        return
    short = lethe.ledger.short_ids([item["id"] for item in page["items"]])
    table = Table()
    for col in ("id", "status", "received (UTC)", "due (UTC)", "targets done"):
        table.add_column(col, no_wrap=True)
    for item in page["items"]:
        table.add_row(short[item["id"]], item["status"], _minute(item["received_at"]), item["due_at"][:10],
                      targets_done(item["tasks"]))
    out.print(table)


def _minute(rfc3339: str) -> str:
    """``2026-12-02T01:02:03.456Z`` as ``2026-12-02 01:02``."""
    return rfc3339[:16].replace("T", " ")


def _dispatch_action(given: str, action: str, done: str) -> None:
    """Run ``Lethe.<action>`` on a request and dispatch what it releases; embedded mode waits for the
    request, otherwise say what was done and warn about anything the broker did not take."""
    lethe = make_lethe()
    rid = request_id(lethe, given)
    with dispatching(lethe):
        getattr(lethe, action)(rid, actor=actor())
        if lethe.settings.embedded:
            raise typer.Exit(exit_code(wait_with_progress(lethe, rid, None)))
    out.print(f"{done} {rid}")
    warn_not_dispatched(lethe.ledger.status(rid))


@app.command(epilog=reads(LEDGER_ENV, BROKER_ENV))
def retry(given: RequestId) -> None:
    """Move a request's failed tasks back to pending and dispatch them (embedded mode: and wait)."""
    _dispatch_action(given, "retry", "retrying failed tasks of")


@app.command(epilog=reads(LEDGER_ENV))
def cancel(given: RequestId) -> None:
    """Cancel a request that has not started executing."""
    lethe = make_lethe()
    rid = request_id(lethe, given)
    lethe.cancel(rid, actor=actor())
    out.print(f"cancelled {rid}")


@app.command(epilog=reads(LEDGER_ENV, BROKER_ENV))
def approve(given: RequestId) -> None:
    """Let a request waiting on max_items (or a dataset request) go ahead (admin).

    The approval covers the targets and counts shown; embedded mode waits for the request."""
    _dispatch_action(given, "approve", "approved")


@app.command(epilog=reads(LEDGER_ENV))
def extend(
    given: RequestId,
    reason: Annotated[str, typer.Option(help="Why more time is needed (kept in the audit trail).")],
) -> None:
    """Extend a request's deadline once: GDPR two more months, CCPA 45 more days."""
    lethe = make_lethe()
    rid = request_id(lethe, given)
    due = lethe.ledger.extend_deadline(rid, reason, actor=actor())
    out.print(f"{rid} is now due {due}")
