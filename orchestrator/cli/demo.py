"""``lethe demo``: try lethe on a bare machine, on a synthetic estate of embedded stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.common import Commands, fail, out

app = Commands()


@app.command(epilog="Environment: none (the demo makes its own ledger, keys and stores under --workdir).")
def demo(
    subjects: Annotated[int, typer.Option(min=2, max=5000, metavar="N", help="Synthetic users to create.")] = 200,
    erase: Annotated[int, typer.Option(min=1, metavar="K", help="How many of them to erase.")] = 5,
    workdir: Annotated[Path, typer.Option(metavar="DIR", help="Where the demo's ledger and stores live (emptied "
                                          "first).")] = Path(".lethe-demo"),
) -> None:
    """Build a synthetic estate on embedded stores and erase some subjects through the real pipeline."""
    try:  # moto's server and the stores' clients come with the demo extra, not with the core
        import moto  # noqa: F401

        from orchestrator.demo import run_demo
    except ModuleNotFoundError:
        fail("lethe demo needs the 'demo' extra, which is not installed: pip install 'lethe[demo]'")

    if erase >= subjects:
        fail("--erase must be smaller than --subjects (the rest prove nothing else is touched)")
    raise typer.Exit(run_demo(subjects=subjects, erase=erase, workdir=workdir, console=out))
