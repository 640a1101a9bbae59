"""Which registered model versions an erasure reaches: the runs (any experiment, deleted ones included)
whose dataset inputs carry one of the subject's datasets, name and digest equal on the same input, and the
live versions those runs back (see ``workers/targets/mlflow.py`` for the rules)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from workers.targets.mlflow_api import PAGE, chunks, pages, quotable, translate

QUARANTINE_TAG = "lethe.quarantined"
SHARD_TAG = "lethe.shard"
SERVING_STAGES = frozenset({"Production", "Staging"})


@dataclass(frozen=True)
class ModelVersionRef:
    """A live registered model version reached through a run that consumed one of the subject's datasets."""

    name: str
    version: str
    run_id: str
    model_id: str | None
    aliases: tuple[str, ...]
    stage: str | None
    quarantined_by: str | None
    shard: str | None
    datasets: tuple[tuple[str, str], ...]

    @property
    def quarantined(self) -> bool:
        return self.quarantined_by is not None and not self.aliases and self.stage not in SERVING_STAGES


@dataclass
class Selection:
    runs: dict[str, Any] = field(default_factory=dict)  # run id -> Run whose inputs carry a subject's dataset
    versions: list[ModelVersionRef] = field(default_factory=list)  # in scope: the ones acted on
    kept: list[ModelVersionRef] = field(default_factory=list)  # same runs, outside registered_model's scope

    def leftover_runs(self) -> set[str]:
        """Matched runs already marked deleted that back no live version: purged with the rest."""
        backing = {v.run_id for v in (*self.versions, *self.kept)}
        return {rid for rid, run in self.runs.items()
                if run.info.lifecycle_stage == "deleted" and rid not in backing}



RUN_IDS_PER_SEARCH = 100  # run ids in one search filter
MODEL_ID_SOURCE = re.compile(r"^models:/(m-[0-9A-Za-z]+)/?$")  # a version registered from a logged model


def select_versions(client: Any, wanted: set[tuple[str, str | None]], scope: str | None) -> Selection:
    """The runs that consumed a wanted dataset, (name, digest) or (name, None) for every build of it, and the
    live versions they back; versions outside ``scope`` (a registered model name) are kept, not acted on."""
    if scope is not None:
        with translate("GetRegisteredModel"):
            client.get_registered_model(scope)
    from mlflow.entities import ViewType

    experiment_ids = [e.experiment_id for e in pages(
        "SearchExperiments", client.search_experiments, view_type=ViewType.ALL, max_results=PAGE)]
    selection = Selection()
    used: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for name, digest in sorted(wanted, key=lambda w: (w[0], w[1] or "")):
        clauses = [f"dataset.{key} = '{value}'" for key, value in (("name", name), ("digest", digest))
                   if value is not None and quotable(value)]
        for chunk in chunks(experiment_ids, RUN_IDS_PER_SEARCH):
            for run in pages("SearchRuns", client.search_runs, chunk, filter_string=" AND ".join(clauses),
                              run_view_type=ViewType.ALL, max_results=PAGE):
                for consumed in run.inputs.dataset_inputs:
                    pair = (consumed.dataset.name, consumed.dataset.digest)
                    if pair[0] == name and digest in (None, pair[1]):
                        selection.runs[run.info.run_id] = run
                        used[run.info.run_id].add(pair)
    versions: list[Any] = []
    for chunk in chunks(sorted(selection.runs), RUN_IDS_PER_SEARCH):
        run_filter = "run_id IN ({})".format(", ".join(f"'{rid}'" for rid in chunk))
        versions.extend(pages("SearchModelVersions", client.search_model_versions,
                               filter_string=run_filter, max_results=PAGE))
    aliases: dict[str, dict[str, list[str]]] = {}
    for name in sorted({mv.name for mv in versions if scope is None or mv.name == scope}):
        with translate("GetRegisteredModel"):
            registered = client.get_registered_model(name)
        by_version: dict[str, list[str]] = defaultdict(list)
        for alias, version in (registered.aliases or {}).items():
            by_version[str(version)].append(alias)
        aliases[name] = by_version
    for mv in versions:
        if mv.run_id not in selection.runs or mv.current_stage == "Deleted_Internal":
            continue
        tags = mv.tags or {}
        model_id = getattr(mv, "model_id", None)
        source_model = MODEL_ID_SOURCE.match(mv.source or "")
        ref = ModelVersionRef(
            name=mv.name, version=str(mv.version), run_id=mv.run_id,
            model_id=model_id or (source_model.group(1) if source_model else None),
            aliases=tuple(sorted(aliases.get(mv.name, {}).get(str(mv.version), ()))),
            stage=mv.current_stage, quarantined_by=tags.get(QUARANTINE_TAG), shard=tags.get(SHARD_TAG),
            datasets=tuple(sorted(used[mv.run_id])),
        )
        (selection.versions if scope is None or mv.name == scope else selection.kept).append(ref)
    selection.versions.sort(key=lambda v: (v.name, int(v.version) if v.version.isdigit() else 0))
    return selection
