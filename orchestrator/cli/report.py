"""``lethe report ID``: the signed report of what a request did and did not erase (``orchestrator.reports``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.certificates import write_secret_file
from orchestrator.cli.common import LEDGER_ENV, Commands, fail, make_lethe, out, reads, request_id
from orchestrator.reports import erasure_report

app = Commands()


@app.command(epilog=reads(LEDGER_ENV))
def report(
    given: Annotated[str, typer.Argument(metavar="ID", help="The request's id, or any unique prefix of it.")],
    out_file: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", help="Write the report to this new file (mode 0600; an existing file is "
        "refused) instead of stdout.")] = None,
) -> None:
    """Print a request's signed report of what was and was not erased, per target (any status: a failed or
    partial request has no certificate). Check it as a certificate: lethe certificate --verify FILE."""
    lethe = make_lethe()
    signed = erasure_report(lethe.ledger.status(request_id(lethe, given)), lethe.ledger.signing_key)
    text = json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if out_file is None:
        sys.stdout.write(text)
        return
    try:
        write_secret_file(out_file, text.encode("utf-8"))
    except FileExistsError:
        fail(f"{out_file} exists: give a new file")
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc.strerror or exc}")
    out.print(f"report of {signed['request_id']} ({signed['status']}) written to {out_file}", highlight=False)
