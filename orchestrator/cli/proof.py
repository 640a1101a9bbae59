"""The proof of an erasure: certificates and the ledger's own verification."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from orchestrator.cli.common import LEDGER_ENV, Commands, Exit, err, fail, make_lethe, out, reads, request_id

app = Commands()


@app.command(epilog=reads(LEDGER_ENV))
def certificate(
    given: Annotated[str | None, typer.Argument(
        metavar="ID", help="A completed request's id, or any unique prefix of it.")] = None,
    public_key: Annotated[bool, typer.Option("--public-key", help="Print the public key (PEM) instead.")] = False,
) -> None:
    """Print a completed request's signed certificate, or the key that verifies certificates."""
    if (given is None) == (not public_key):
        fail("give a request ID or --public-key")
    lethe = make_lethe()
    if public_key:
        sys.stdout.write(lethe.ledger.public_key_pem())
        return
    assert given is not None
    cert = lethe.ledger.certificate(request_id(lethe, given))
    sys.stdout.write(json.dumps(cert, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@app.command("verify-ledger", epilog=reads(LEDGER_ENV))
def verify_ledger() -> None:
    """Check the audit chain, completion records and certificates; exit 1 naming the first bad entry."""
    lethe = make_lethe()
    problems = lethe.ledger.verify()
    if problems:
        err.print(f"[red]ledger verification failed:[/red] {problems[0]}", highlight=False)
        for problem in problems[1:20]:
            err.print(f"  also: {problem}", highlight=False)
        raise typer.Exit(Exit.FAILED)
    out.print("ledger verified: audit chain, completion records and certificates are intact")
