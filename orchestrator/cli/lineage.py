"""``lethe lineage``: which subjects a training dataset holds, so an erasure reaches the models trained on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.cli.common import LEDGER_ENV, MAP_ENV, Commands, actor, err, identifier_lines, make_lethe, out, reads

app = Commands(name="lineage", help="Model lineage: which subjects a training dataset holds.")


@app.command("record", epilog=reads(MAP_ENV, LEDGER_ENV))
def lineage_record(
    dataset_name: Annotated[str, typer.Option(metavar="NAME", help="Dataset name, as logged with mlflow.log_input.")],
    dataset_digest: Annotated[str, typer.Option(
        metavar="DIGEST", help="Dataset digest, as logged with mlflow.log_input.")],
    subjects_file: Annotated[Path, typer.Option(metavar="FILE", help="One identifier value per line.", exists=True,
                                                dir_okay=False)],
    identifier: Annotated[str, typer.Option(metavar="KIND", help="Identifier kind of the values.")] = "user_id",
) -> None:
    """Record the subjects a training dataset holds, as keyed hashes.

    The raw values are not kept; recording the same name and digest again replaces its members."""
    from orchestrator.identifiers import keyed_hash, normalise_value

    lethe = make_lethe()
    datamap = lethe.load_map()
    key = lethe.settings.subject_key_bytes
    hashes = (subject_hash for _, subject_hash in identifier_lines(subjects_file, identifier, datamap, lambda value:
              keyed_hash(key, identifier, normalise_value(identifier, value, datamap.identifiers[identifier]))))
    with Progress(TextColumn("recording"), TextColumn("{task.completed:,} subjects"), TimeElapsedColumn(),
                  console=err, disable=not err.is_terminal) as progress:
        bar = progress.add_task("recording", total=None)
        count = lethe.ledger.record_lineage(dataset_name, dataset_digest, hashes, actor=actor(),
                                            on_progress=lambda n: progress.update(bar, completed=n))
    out.print(f"recorded {count:,} subjects in dataset {dataset_name} ({dataset_digest})")


@app.command("list", epilog=reads(LEDGER_ENV))
def lineage_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the datasets as JSON (items).")] = False,
) -> None:
    """The recorded training datasets, newest first, with how many subjects each holds."""
    datasets = make_lethe().ledger.list_datasets()
    if as_json:
        out.print_json(json.dumps({"items": datasets}))
        return
    table = Table()
    for col in ("dataset", "digest", "subjects", "recorded (UTC)"):
        table.add_column(col, justify="right" if col == "subjects" else "left")
    for d in datasets:
        table.add_row(d["name"], d["digest"], f"{d['members']:,}", d["recorded_at"][:16].replace("T", " "))
    out.print(table)
