"""``lethe check-map``: validate a data map before anything runs on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.common import MAP_ENV, Commands, fail, out, reads
from orchestrator.config import Settings
from orchestrator.datamap import DataMap
from workers.targets.base import TargetConfig

app = Commands()


@app.command("check-map", epilog=reads(MAP_ENV))
def check_map(
    path: Annotated[Path | None, typer.Argument(
        metavar="PATH", help="Data map YAML (default: LETHE_DATA_MAP, else ./datamap.yaml).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Every declared store needs a target or reason.")] = False,
    probe: Annotated[bool, typer.Option("--probe", help="Connect to every target, lookup (keys_query, ids_query) and "
                                        "identities: resolution and report, one line each, what is missing or "
                                        "cannot be reached (sql: also referencing tables no earlier "
                                        "target erases).")] = False,
) -> None:
    """Validate a data map and print the plan shape (exit 2 naming what is wrong)."""
    settings = Settings()
    source = path or settings.data_map
    datamap = DataMap.load(source).check_retention(settings.tombstone_days, str(source))
    problems = datamap.strict_problems() if strict else []
    if probe:  # adapters are imported only here: a plain check-map stays instant
        from workers.targets.probes import probe_map, probe_query

        problems += [f"target {name!r}: {problem}" for name, problem in probe_map(datamap.targets)]
        problems += [f"identity {i.name!r}: {problem}" for i in datamap.identities
                     for problem in probe_query(i.query, "sql")]
    table = Table(title=f"data map {datamap.digest[:12]}: {len(datamap.targets)} targets", title_justify="left")
    for col in ("#", "target", "kind", "after", "needs", "copies"):
        table.add_column(col)
    for i, t in enumerate(datamap.targets, 1):
        table.add_row(str(i), t.name, t.kind, ", ".join(t.after) or "-",
                      ", ".join(sorted(t.required_identifiers())) or "-", _copies(t))
    out.print(table)
    for s in datamap.stores:
        if s.not_erased:
            out.print(f"not erased: {s.name}: {s.not_erased}")
    if probe and not problems:
        out.print("probe: no problems found")
    if problems:
        fail("\n".join(problems))


def _copies(target: TargetConfig) -> str:
    """What the map says of a target's copies: the primary it mirrors, the backups it keeps."""
    parts = [f"replica of {target.replica_of}"] if target.replica_of else []
    if target.backups:
        parts.append(f"backups {target.backups.retention_days} d")
    return ", ".join(parts) or "-"
