"""``lethe lineage``: which subjects a training dataset holds, so an erasure reaches the models trained on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from orchestrator.cli.common import err, identifier_values, make_lethe, out, user_errors

app = typer.Typer(name="lineage", help="Model lineage: which subjects a training dataset holds.",
                  no_args_is_help=True)


@app.command("record")
def lineage_record(
    dataset_name: Annotated[str, typer.Option(help="Dataset name, as logged with mlflow.log_input.")],
    dataset_digest: Annotated[str, typer.Option(help="Dataset digest, as logged with mlflow.log_input.")],
    subjects_file: Annotated[Path, typer.Option(help="One identifier value per line.", exists=True, dir_okay=False)],
    identifier: Annotated[str, typer.Option(help="Identifier kind of the values.")] = "user_id",
) -> None:
    """Record the subjects a training dataset holds, as keyed hashes (the raw values are not kept)."""
    from orchestrator.identifiers import keyed_hash, normalise_value

    lethe = make_lethe()
    with user_errors():
        datamap = lethe.load_map()
        key = lethe.settings.subject_key_bytes
        hashes = identifier_values(subjects_file, identifier, datamap, lambda value: keyed_hash(
            key, identifier, normalise_value(identifier, value, datamap.identifiers[identifier])))
        ledger = lethe.ledger

    with Progress(TextColumn("recording"), TextColumn("{task.completed:,} subjects"), TimeElapsedColumn(),
                  console=err, disable=not err.is_terminal) as progress, user_errors():
        bar = progress.add_task("recording", total=None)
        count = ledger.record_lineage(dataset_name, dataset_digest, hashes, actor="cli",
                                      on_progress=lambda n: progress.update(bar, completed=n))
    out.print(f"recorded {count:,} subjects in dataset {dataset_name} ({dataset_digest})")
