"""``lethe replay``: after restoring a store from a backup, erase again from it every subject erased since the
copy was taken (orchestrator.replay)."""

from __future__ import annotations

import json
from typing import Annotated

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
    exit_filed,
    fail,
    make_lethe,
    out,
    progress_bars,
    reads,
    wait_for_many,
)
from orchestrator.replay import ReplayError, Tally, replay, scanner
from orchestrator.times import parse_time
from workers.targets.base import TargetError

app = Commands()


@app.command("replay", epilog=reads(LEDGER_ENV, BROKER_ENV, MAP_ENV, ("LETHE_TOMBSTONE_DAYS",)))
def replay_command(
    target: Annotated[str, typer.Option("--target", metavar="NAME", help="The restored target (a data-map "
                                        "target name).")],
    since: Annotated[str | None, typer.Option(metavar="DATE", help="When the restored copy was taken (ISO "
                                              "8601; no offset: UTC). Default: the whole tombstone period "
                                              "(LETHE_TOMBSTONE_DAYS).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the follow-ups to finish (always in embedded "
                                       "mode).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Re-erase a restored target: scan it, and file one follow-up request (that target only) per subject
    erased since DATE that it holds again. A subject never erased is never touched. Safe to run again: a
    follow-up already filed is not filed twice. Prints scanned, invalid, tombstoned, filed, already filed.
    Exit 2 if the target cannot be scanned (the line says what to do instead); 1 if the store fails or a
    follow-up failed; 3 if one still waits; 4 if follow-ups could not be dispatched (as bulk submit)."""
    when = parse_time(since) if since is not None else None
    lethe = make_lethe()
    datamap = lethe.load_map()
    try:
        scanner(datamap, target)  # refuse before anything starts
    except ReplayError as exc:
        fail(str(exc))
    with dispatching(lethe), progress_bars() as progress:
        scanned = progress.add_task("scanned", total=None)
        filed = progress.add_task("filed", total=None)

        def show(tally: Tally) -> None:
            progress.update(scanned, completed=tally.scanned)
            progress.update(filed, completed=tally.filed)

        try:
            tally = replay(lethe, datamap, target, when, actor=actor(), on_page=show)
        except TargetError as exc:
            fail(f"scanning {target} failed: {exc}", Exit.FAILED)
        counts = (wait_for_many(lethe, progress, tally.requests, None)
                  if tally.requests and (wait or lethe.settings.embedded) else {})
    not_dispatched = (lethe.ledger.not_dispatched_count(tally.requests)
                      if tally.requests and not lethe.settings.embedded else 0)
    if as_json:
        out.print_json(json.dumps({**tally.as_dict(), "requests": tally.requests, "statuses": counts,
                                   "not_dispatched": not_dispatched}))
    else:
        out.print(f"scanned {tally.scanned:,} · invalid {tally.invalid:,} · tombstoned {tally.tombstoned:,} · "
                  f"filed {tally.filed:,} · already filed {tally.already_filed:,}", highlight=False)
        if counts:
            err.print(", ".join(f"{n:,} {st}" for st, n in sorted(counts.items())), highlight=False)
    exit_filed(tally.requests, counts, not_dispatched)
