"""``lethe dead-letters``: the events the intake refused, as an operator can act on them (never their
identifiers), and a replay of one after a fix."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.common import BROKER_ENV, Commands, Exit, fail, make_lethe, out, reads
from orchestrator.service import Lethe

app = Commands(name="dead-letters", help="Events the intake refused: list them, replay one after a fix.")


def _broker(lethe: Lethe) -> str:
    """The broker URL, once the broker answered (exit 4 if it does not, in one line)."""
    if not lethe.settings.broker_url:
        fail("lethe dead-letters needs LETHE_BROKER_URL (redis://… or amqp://…): dead letters live on the broker")
    lethe.check_broker()
    return lethe.settings.broker_url


@app.command("list", epilog=reads(BROKER_ENV))
def dead_letters_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object with the items.")] = False,
) -> None:
    """List the dead letters, oldest first.

    Each with its id, reason and time, and the event's type, source and id when it has them (any subject
    value blanked out). The bodies stay on the queue unchanged."""
    from kombu import Connection

    from orchestrator.deadletters import list_dead_letters

    lethe = make_lethe(migrate=False)
    with Connection(_broker(lethe)) as connection:
        entries = list_dead_letters(connection)
    if as_json:
        out.print_json(json.dumps({"items": [entry.as_dict() for entry in entries]}))
        return
    table = Table()
    for column in ("id", "reason", "dead-lettered at", "type", "source", "event id"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(entry.id, entry.reason, entry.dead_lettered_at or "-", entry.type or "-", entry.source or "-",
                      entry.event_id or "-")
    out.print(table)
    out.print(f"{len(entries)} dead letter(s)")


@app.command("replay", epilog=reads(BROKER_ENV))
def dead_letters_replay(
    dead_letter_id: Annotated[str, typer.Argument(metavar="ID", help="A dead letter's id, or a unique prefix.")],
) -> None:
    """Replay one dead letter after a fix.

    Its body goes back on lethe.intake unchanged: it is checked and deduplicated again like any event (a
    running `lethe intake` files it or dead-letters it anew)."""
    from kombu import Connection

    from orchestrator.deadletters import DeadLetterNotFound, replay

    lethe = make_lethe(migrate=False)
    with Connection(_broker(lethe)) as connection:
        try:
            entry = replay(connection, dead_letter_id)
        except DeadLetterNotFound as exc:
            fail(str(exc), Exit.BAD_INPUT)
    out.print(f"replayed {entry.id} ({entry.reason}) to lethe.intake")
