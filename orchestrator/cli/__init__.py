"""The ``lethe`` command. Exit codes (SPEC): 0 done, 1 failed or cancelled, 2 bad input, 3 waiting or timed
out, 4 the ledger database or the broker cannot be reached.

Each module of this package owns one group of commands as a ``common.Commands``: ``Commands()`` adds its
commands to ``lethe`` itself, ``Commands(name="hold", help=...)`` makes ``lethe hold …``. Registering a
module is one ``app.add_typer`` line below. Errors are translated in one place, ``errors.explain``.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from rich.markup import escape
from typer._click.exceptions import NoArgsIsHelpError  # typer vendors click; no public name for it

from orchestrator.cli import (
    deadletters,
    demo,
    holds,
    keys,
    lineage,
    maps,
    proof,
    replay,
    report,
    requests,
    services,
    submit,
)
from orchestrator.cli.common import Commands, Exit, err
from orchestrator.cli.errors import explain

app = Commands(name="lethe", help="Erase a data subject everywhere, verify it, and prove it.",
               epilog="Exit codes: 0 done; 1 failed or cancelled; 2 bad input, nothing done; 3 waiting or timed "
               "out; 4 the ledger database or the broker cannot be reached. Each command's --help names the "
               "LETHE_* variables it reads.", add_completion=False, pretty_exceptions_enable=False)
app.add_typer(submit.app)
app.add_typer(requests.app)
app.add_typer(proof.app)
app.add_typer(keys.app)
app.add_typer(holds.app)
app.add_typer(services.app)
app.add_typer(maps.app)
app.add_typer(lineage.app)
app.add_typer(demo.app)
app.add_typer(deadletters.app)
app.add_typer(report.app)
app.add_typer(replay.app)


def _print_version(value: bool) -> None:
    if value:
        try:
            print(f"lethe {version('lethe')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("lethe (not installed)")
        raise typer.Exit()


@app.callback()
def lethe(
    _version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                           help="Print lethe's version and exit.")] = False,
) -> None:
    """Erase a data subject everywhere, verify it, and prove it."""


def main() -> None:
    """Run ``lethe``; every mistake ends as one line on stderr with its SPEC exit code (``errors.explain``)."""
    try:
        code = app(prog_name="lethe", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `lethe`, `lethe hold`: the help, as a usage error
        typer.echo(exc.ctx.get_help(), err=True)
        sys.exit(Exit.BAD_INPUT)
    except typer.TyperException as exc:  # a bad option or argument (click's errors): its message, on one line
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err.print(f"[red]error:[/red] {escape(_one_line(exc.format_message()))}{escape(where)}",
                  highlight=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(Exit.FAILED)
    except Exception as exc:
        explained = explain(exc)
        if explained is None:
            raise
        code, message = explained
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else Exit.DONE)


def _one_line(message: str) -> str:
    return " ".join(message.replace("Value error, ", "").split())
