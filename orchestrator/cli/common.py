"""What every ``lethe`` command shares: the consoles, the exit codes, the command class behind the help, the
service object, where dispatched work runs, request ids as typed, and the printing of a request's tasks."""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from orchestrator import logs
from orchestrator.config import ConfigError, Settings
from orchestrator.datamap import DataMap, DataMapError
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.ledger import DONE_TASK, TERMINAL_REQUEST, TERMINAL_TASK, LedgerError
from orchestrator.service import WAITING_REQUEST, Lethe
from orchestrator.times import InvalidTime
from workers.targets.base import UnknownTargetKind

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are read by scripts too: no hard wraps
for console in (out, err):
    if not console.is_terminal:
        console.width = 200  # piped or captured: no terminal to fit, so no column is cut to 80 ("profile-phot…")

T = TypeVar("T")
USER_ERRORS = (InvalidIdentifier, DataMapError, LedgerError, ConfigError, UnknownTargetKind, InvalidTime)

# The environment each command reads, named in its help (SPEC "Configuration").
LEDGER_ENV = ("LETHE_DATABASE_URL", "LETHE_SUBJECT_KEY", "LETHE_SIGNING_KEY")
BROKER_ENV = ("LETHE_BROKER_URL",)
MAP_ENV = ("LETHE_DATA_MAP",)
PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class Exit:
    DONE, FAILED, BAD_INPUT, WAITING, UNREACHABLE = 0, 1, 2, 3, 4


def reads(*groups: tuple[str, ...]) -> str:
    """A command's epilog: the LETHE_* variables it reads."""
    return "Environment: " + ", ".join(dict.fromkeys(name for group in groups for name in group))


def fail(message: str, code: int = Exit.BAD_INPUT) -> NoReturn:
    # escaped: messages carry brackets ("pip install 'lethe[s3]'", a regex) that rich would take for markup
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


# -- help: what an option takes, never a Python type -----------------------------------------------------
class _PlainArgument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the argument's name (ID, PATH) already says what it takes


class _PlainHelp:
    """Typer's help shows a Python type beside each parameter (``<bool>``, ``<list[str]>``, ``<str>``): a flag
    shows nothing, an option without a metavar of its own shows its name in capitals (``--dataset
    DATASET``; commands give better ones, ``--timeout SECONDS``), an argument only its name."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if type(param) is TyperArgument:
                param.__class__ = _PlainArgument
            elif isinstance(param, TyperOption) and param.metavar is None:
                if param.is_flag or param.count:
                    param.metavar = ""
                elif not param.type_descriptor.is_choice:  # choices show themselves: <gdpr|ccpa>
                    param.metavar = (param.name or "value").upper()
        return params


class Command(_PlainHelp, TyperCommand):
    pass


class Group(_PlainHelp, TyperGroup):
    pass


class Commands(typer.Typer):
    """The commands of one module, with the plain help. ``Commands()`` adds its commands to ``lethe`` itself;
    ``Commands(name="hold", help=...)`` is a group of its own (``lethe hold …``)."""

    def __init__(self, name: str | None = None, help: str | None = None, **kwargs: Any):
        super().__init__(name=name, help=help, cls=Group, no_args_is_help=name is not None, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = Command, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls, **kwargs)


# -- the service, the actor, where work runs ---------------------------------------------------------------
def make_lethe(migrate: bool = True) -> Lethe:
    """The service for this command, its ledger migrated (SPEC: every command migrates on start). A bad
    setting, an unreachable database: the error boundary (``orchestrator.cli.errors``) says so in one line."""
    settings = Settings()
    logs.configure(level="WARNING")
    lethe = Lethe(settings)
    if migrate:
        lethe.migrate()
    return lethe


def actor() -> str:
    """Who acts, in the audit trail: ``cli:<OS user>`` (as the API records its token's name)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        user = f"uid{os.getuid()}"
    return f"cli:{user}"[:200]


def dispatching(lethe: Lethe, check_broker: bool = True) -> AbstractContextManager[None]:
    """Where the work a command dispatches runs: in embedded mode an in-process broker and worker for the
    life of the block; otherwise the deployment's workers, once the broker answered (exit 4 if it does not:
    a command files nothing no worker could get; what a broker outage leaves undispatched later is on
    record, and reconcile sends it)."""
    if lethe.settings.embedded:
        return lethe.embedded_worker()
    if check_broker:
        lethe.check_broker()
    return nullcontext()


def request_id(lethe: Lethe, given: str) -> str:
    """The request an ID argument names: the whole id or any unique prefix (exit 2 if ambiguous)."""
    return lethe.ledger.resolve_request_id(given)


def exit_code(status: dict[str, Any]) -> int:
    if status["status"] == "completed":
        return Exit.DONE
    if status["status"] in ("failed", "cancelled"):
        return Exit.FAILED
    return Exit.WAITING


def parse_subject(pairs: list[str]) -> dict[str, str]:
    subject: dict[str, str] = {}
    for pair in pairs:
        kind, sep, value = pair.partition("=")
        if not sep:
            fail(f"--subject takes KIND=VALUE (got {len(pair)} characters without '=')")
        if kind in subject:
            fail(f"--subject {kind} given twice")
        subject[kind] = value
    return subject


def identifier_lines(path: Path, identifier: str, datamap: DataMap,
                     convert: Callable[[str], T]) -> Iterator[tuple[int, T]]:
    """``(line number, convert(value))`` for every non-empty line of ``path``, one value of ``identifier`` per
    line, read as the result is iterated; an invalid value raises InvalidIdentifier naming its line. The kind
    is checked now."""
    if identifier not in datamap.identifiers:
        raise InvalidIdentifier(f"unknown identifier kind {identifier!r}")

    def values() -> Iterator[tuple[int, T]]:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                value = line.rstrip("\r\n")
                if not value:
                    continue
                try:
                    yield number, convert(value)
                except InvalidIdentifier as exc:
                    raise InvalidIdentifier(f"{path.name} line {number}: {exc}") from None

    return values()


# -- progress --------------------------------------------------------------------------------------------
class LineProgress:
    """Progress for a log or a pipe: one line every PROGRESS_EVERY seconds and one at the end, e.g.
    ``filed 5,000/100,000 · finished 1,200/100,000 · 35 s``. The same calls as rich's Progress."""

    def __init__(self, console: Console, every: float = PROGRESS_EVERY):
        self.console, self.every = console, every
        self.tasks: dict[int, list[Any]] = {}  # id -> [description, completed, total]
        self.started = self.printed = time.monotonic()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tasks and exc[0] is None:
            self._print()

    def add_task(self, description: str, total: float | None = None, **_: Any) -> TaskID:
        self.tasks[len(self.tasks)] = [description, 0, total]
        return TaskID(len(self.tasks) - 1)

    def update(self, task_id: TaskID, completed: float | None = None, **_: Any) -> None:
        if completed is not None:
            self.tasks[task_id][1] = completed
        if time.monotonic() - self.printed >= self.every:
            self._print()

    def _print(self) -> None:
        self.printed = time.monotonic()
        parts = [f"{name} {done:,.0f}" + (f"/{total:,.0f}" if total is not None else "")
                 for name, done, total in self.tasks.values()]
        self.console.print(" · ".join([*parts, f"{self.printed - self.started:.0f} s"]), highlight=False)


def progress_bars() -> Progress | LineProgress:
    """Rich progress bars on a terminal; periodic one-line progress otherwise."""
    if not err.is_terminal:
        return LineProgress(err)
    return Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err)


def wait_with_progress(lethe: Lethe, request_id: str, timeout: float | None) -> dict[str, Any]:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        bar = progress.add_task("erasing", total=None)

        def update(status: dict[str, Any]) -> None:
            tasks = status["tasks"]
            done = sum(1 for t in tasks if t["status"] in TERMINAL_TASK)
            items = [t["progress"] for t in tasks if t["status"] == "running" and t.get("progress")]
            detail = "".join(f" · {p['done'] or 0:,}/{p['estimated'] or '?'} items" for p in items)
            progress.update(bar, total=len(tasks), completed=done, description=status["status"] + detail)

        return lethe.wait(request_id, timeout=timeout, on_progress=update)


def wait_for_many(lethe: Lethe, progress: Progress | LineProgress, request_ids: list[str],
                  timeout: float | None) -> dict[str, int]:
    """Wait for a batch of filed requests with a "finished" bar; how many ended in each status."""
    finished = progress.add_task("finished", total=len(request_ids))
    return lethe.wait_many(request_ids, timeout=timeout, on_progress=lambda c: progress.update(
        finished, completed=sum(n for st, n in c.items() if st in TERMINAL_REQUEST | WAITING_REQUEST)))


def exit_filed(request_ids: list[str], counts: dict[str, int], not_dispatched: int) -> NoReturn:
    """How a command that filed a batch of requests ends: tasks not dispatched are said on stderr (SPEC) and
    exit 4; otherwise done when not waited for or all completed, failed if any failed, else waiting."""
    if not_dispatched:
        err.print(f"[yellow]warning:[/yellow] {not_dispatched:,} task(s) not dispatched (the broker could not be "
                  "reached); `lethe reconcile` sends them on its next pass", highlight=False)
        raise typer.Exit(Exit.UNREACHABLE)
    if not counts:
        raise typer.Exit(Exit.DONE)
    if counts.get("failed") or counts.get("cancelled"):
        raise typer.Exit(Exit.FAILED)
    raise typer.Exit(Exit.DONE if counts.get("completed", 0) == len(request_ids) else Exit.WAITING)


# -- printing --------------------------------------------------------------------------------------------
def targets_done(tasks: list[dict[str, Any]]) -> str:
    """``3/4, 1 failed``: targets done (completed or skipped) of all, and the failed ones, as the dashboard
    shows them."""
    done = sum(1 for t in tasks if t["status"] in DONE_TASK)
    failed = sum(1 for t in tasks if t["status"] == "failed")
    return f"{done}/{len(tasks)}" + (f", {failed} failed" if failed else "")


def warn_not_dispatched(status: dict[str, Any]) -> None:
    """Say on stderr that some of a request's tasks are on record as not dispatched (SPEC)."""
    if status.get("not_dispatched"):
        err.print(f"[yellow]warning:[/yellow] request {status['id']}: {status['not_dispatched']} task(s) not "
                  "dispatched (the broker could not be reached); `lethe reconcile` sends them on its next pass",
                  highlight=False)


def print_tasks(status: dict[str, Any], console: Console) -> None:
    table = Table(title=f"request {status['id']}: {status['status']}"
                  + (" (dry run)" if status["dry_run"] else ""), title_justify="left")
    for col in ("target", "kind", "status", "deleted", "residue", "attempts", "gone by", "error / reason"):
        table.add_column(col)
    for t in status["tasks"]:
        table.add_row(t["target"], t["kind"], t["status"], str(t["deleted"] if t["deleted"] is not None else "-"),
                      str(t["residue"] if t["residue"] is not None else "-"), str(t["attempts"]),
                      t.get("gone_by") or "-", escape(t["error"] or t["reason"] or ""))
    console.print(table)
