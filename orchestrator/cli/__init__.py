"""The ``lethe`` command. Exit codes (SPEC): 0 done, 1 failed or cancelled, 2 bad input, 3 waiting/timeout.

Each module of this package owns one group of commands as a ``typer.Typer``; a group with a name of its own
(``typer.Typer(name="hold", ...)``) becomes ``lethe hold …``, one without is merged into ``lethe``.
Registering a module is one line below.
"""

from __future__ import annotations

import sys

import typer

from orchestrator.cli import demo, holds, lineage, maps, proof, requests, services, submit
from orchestrator.cli.common import err

app = typer.Typer(name="lethe", help="Erase a data subject everywhere, verify it, and prove it.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(submit.app)
app.add_typer(requests.app)
app.add_typer(proof.app)
app.add_typer(holds.app)
app.add_typer(services.app)
app.add_typer(maps.app)
app.add_typer(lineage.app)
app.add_typer(demo.app)


def main() -> None:
    try:
        app(prog_name="lethe")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
