"""What every ``lethe`` command shares: the consoles, the exit codes, the user-error boundary, the service
object, and the printing of a request's tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import logs
from orchestrator.config import ConfigError, Settings
from orchestrator.datamap import DataMap, DataMapError
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.ledger.store import TERMINAL_TASK, LedgerError
from orchestrator.service import Lethe
from orchestrator.times import InvalidTime
from workers.targets.base import UnknownTargetKind

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are read by scripts too: no hard wraps

T = TypeVar("T")
USER_ERRORS = (InvalidIdentifier, DataMapError, LedgerError, ConfigError, UnknownTargetKind, InvalidTime)


class Exit:
    DONE, FAILED, BAD_INPUT, WAITING = 0, 1, 2, 3


def fail(message: str, code: int = Exit.BAD_INPUT) -> NoReturn:
    # escaped: messages carry brackets ("pip install 'lethe[s3]'", a regex) that rich would take for markup
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake is a message and exit 2, never a traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc))


def make_lethe() -> Lethe:
    with user_errors():
        settings = Settings()
        logs.configure(level="WARNING")
        return Lethe(settings)


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


def identifier_values(path: Path, identifier: str, datamap: DataMap, convert: Callable[[str], T]) -> Iterator[T]:
    """``convert(value)`` for every non-empty line of ``path``, one value of ``identifier`` per line, read as
    the result is iterated; an invalid value raises InvalidIdentifier naming its line. The kind is checked now."""
    if identifier not in datamap.identifiers:
        raise InvalidIdentifier(f"unknown identifier kind {identifier!r}")

    def values() -> Iterator[T]:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                value = line.rstrip("\r\n")
                if not value:
                    continue
                try:
                    yield convert(value)
                except InvalidIdentifier as exc:
                    raise InvalidIdentifier(f"{path.name} line {number}: {exc}") from None

    return values()


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


def print_tasks(status: dict[str, Any], console: Console) -> None:
    table = Table(title=f"request {status['id']}: {status['status']}"
                  + (" (dry run)" if status["dry_run"] else ""), title_justify="left")
    for col in ("target", "kind", "status", "deleted", "residue", "attempts", "error / reason"):
        table.add_column(col)
    for t in status["tasks"]:
        table.add_row(t["target"], t["kind"], t["status"], str(t["deleted"] if t["deleted"] is not None else "-"),
                      str(t["residue"] if t["residue"] is not None else "-"), str(t["attempts"]),
                      t["error"] or t["reason"] or "")
    console.print(table)
