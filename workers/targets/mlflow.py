"""MLflow model registry: the model versions trained on a dataset that holds the subject are quarantined or
deleted (SPEC "Keyed hashes, completion records and certificates", model lineage).

Data map::

    - name: face-models
      kind: mlflow
      tracking_uri: sqlite:///mlruns.db     # or postgresql://…, a file store path, or http(s)://mlflow:5000
      # registry_uri: …                     # when the registry lives elsewhere than the tracking store
      # backend_store_uri: postgresql://…   # delete through a server: its backend store, to gc the rows
      action: quarantine                     # or delete
      # registered_model: face-attributes    # only this registered model's versions
      after: [profile-photos, face-embeddings]
      max_items: 20
    datasets:
      okcupid-2014:
        face-models: {dataset_name: okcupid-2014}   # lethe submit --dataset okcupid-2014

Selection. The worker gives the task the recorded training datasets (name, digest) that hold the subject
(``TaskContext.datasets``, from ``lethe lineage record``). A subject in no recorded dataset has nothing here:
count, purge and verify return 0 without contacting MLflow. Otherwise:

1. runs, over every experiment (deleted experiments and deleted runs included: a soft-deleted run still
   holds its artifacts and may still back a registered version), whose dataset inputs
   (``mlflow.log_input``) carry one of those datasets: name AND digest equal on the same input. The search
   filter narrows by name and digest; each run's inputs are then checked pair by pair in Python, since
   the filter cannot tie a name to a digest of the same input. A dataset with the subject's dataset name
   but another digest (another build of it, without the subject or before it joined) does not match;
2. the live registered model versions whose ``run_id`` is one of those runs (``registered_model`` limits
   them to one registered model). A version trained on several datasets is reached if any one holds the
   subject; in a sharded ensemble (SISA, versions tagged ``lethe.shard``) only the shards whose dataset
   holds the subject are reached, the others keep serving.

Dataset scope (``lethe submit --dataset NAME``): the map's selector ``{dataset_name: NAME}`` replaces the
lineage lookup, and every run that logged an input of that name, whatever its digest, is reached (the whole
source goes, every build of it). ``dataset_name`` is refused in the target's own entry, where it would widen
every subject's erasure to the whole dataset.

Actions (``deleted`` counts the model versions acted on):

- ``quarantine``: every alias pointing at the version is removed, a legacy ``Production``/``Staging``
  stage is archived (``models:/name/Production`` would still serve it), and the version is tagged
  ``lethe.quarantined=<request id>`` and ``lethe.reason="erasure request <id>: trained on dataset <name>"``.
  A version already quarantined (tag present, no alias, no serving stage) is not acted on again.
- ``delete``: the source runs are marked deleted, the model versions deleted (the registry keeps a redacted
  tombstone row so version numbers are not reused), then the logged models (MLflow 3 keeps a model's files
  under ``<experiment>/models/<id>/``) and the runs are purged: their artifact directories deleted through
  MLflow's artifact repository, then their rows hard-deleted as ``mlflow gc`` does. With a database or
  file-store ``tracking_uri`` lethe holds the backend store and does all of it.
  Through a tracking server (``http(s)://``, ``mlflow server --serve-artifacts``) the REST API deletes the
  versions, and artifacts (``mlflow-artifacts:/…``) are deleted through the server's artifact proxy
  (``DELETE /api/2.0/mlflow-artifacts/artifacts/…``), the emptied run/model directory too. The API has no
  hard delete: the runs and logged models stay soft-deleted (``lifecycle_stage`` deleted: their params,
  metrics, tags and dataset inputs readable by id and in a deleted-view search) until ``mlflow gc`` runs on
  the server's backend store. Given ``backend_store_uri`` (that store), lethe runs that gc for the reached
  runs and logged models itself. A run whose artifact location is a plain path (a server without
  ``--serve-artifacts`` writing to its own disk) cannot be reached from here: refused before anything is
  deleted.
  Versions go before any artifact, so no model version ever points at emptied artifacts. A run or logged
  model that still backs a live version outside the selection (another registered model when
  ``registered_model`` is set) is left in place. Matched runs already marked deleted that back no live
  version (someone deleted them, or an earlier attempt stopped half-way) are purged too.

Levels (``self.level``, recorded with the completion record and the certificate):

- ``quarantined`` for ``quarantine``: the version is withdrawn from serving by alias and stage and marked,
  but it still exists, is listed by searches and its artifacts can be read by version number. That is
  below ``invisible`` (which promises no read or search returns it), so this adapter says so with a level
  of its own rather than overclaim in a signed certificate.
- ``bytes_reclaimed`` for ``delete`` with a local artifact store: the versions, runs and logged models are
  gone and their artifact directories are removed from disk (verify checks). ``invisible`` when an
  artifact location is remote (S3, GCS, …): deleted through its API, but object versions or backups there
  are outside MLflow's view. The backend store's own rows (run parameters, metrics) carry no model bytes.
- ``invisible`` for ``delete`` through a tracking server, with or without ``backend_store_uri``: no version,
  alias or artifact listing returns the model, but the proxy's destination (the server's disk or bucket)
  is not lethe's to read, and without ``backend_store_uri`` the run and logged-model rows remain
  soft-deleted until the server's ``mlflow gc``.

Verify reads the registry back: for ``quarantine`` the residue is every reached version that still has an
alias or a serving stage or lacks the tag; for ``delete`` the reached versions still live, plus matched
runs left marked-deleted but not purged (through a server without the backend store: not emptied of
artifacts), plus files still present in the artifact locations this instance purged.

``lethe.model.retrain_requested`` is emitted (through ``TaskContext.emit``, announced once the task's
completion is recorded) once per affected registered model: the model name, its affected versions (the
highest as ``version``), shards, the datasets (name, digest) and the action, never an identifier. For
``quarantine``, versions an earlier attempt of the same request already quarantined count as affected,
so a retried task still announces them. For ``delete`` the versions are gone after a purge: an attempt
that purged and then died before its completion was recorded leaves the retry nothing to announce.

Telemetry: MLflow reports usage by default. lethe sets ``MLFLOW_DISABLE_TELEMETRY=true`` and
``DO_NOT_TRACK=true`` in the worker's environment before it imports MLflow, and drops a telemetry client
MLflow may have started if something imported it earlier. MLflow takes seconds to import: it is imported
on first use, never when the data map is validated.

Errors: a tracking server that cannot be reached, 429/5xx answers (``INTERNAL_ERROR``,
``TEMPORARILY_UNAVAILABLE``, …), an artifact proxy's 5xx/429 and database connection failures are
RetryableError; a bad URI, a missing
SQLite file (it would be created empty, and every subject would verify 0), a missing ``registered_model``
and any other error are PermanentError. "Does not exist" while deleting is success. Messages name the
operation and MLflow's error code, never a path, a run id or an identifier.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.identifiers import Subject
from workers.targets.base import Heartbeat, PermanentError, TargetConfig, TaskContext
from workers.targets.mlflow_api import (
    DATABASE_SCHEMES,
    PAGE,
    RETRYABLE_ERRORS,
    SERVER_SCHEMES,
    chunks,
    gone_ok,
    load_mlflow,
    local_path,
    mlflow_client,
    open_client,
    pages,
    quotable,
    translate,
    uri_scheme,
)

__all__ = ["QUARANTINE_TAG", "REASON_TAG", "RETRAIN_EVENT", "SHARD_TAG", "MLflowConfig", "MLflowTarget",
           "load_mlflow", "mlflow_client"]  # load_mlflow, mlflow_client: the demo builds its registry with them

QUARANTINE_TAG = "lethe.quarantined"
REASON_TAG = "lethe.reason"
SHARD_TAG = "lethe.shard"
RETRAIN_EVENT = "lethe.model.retrain_requested"
SERVING_STAGES = frozenset({"Production", "Staging"})
RUN_IDS_PER_SEARCH = 100
TAG_VALUE_LIMIT = 5000  # MLflow's limit for a model version tag value
MODEL_ID_SOURCE = re.compile(r"^models:/(m-[0-9A-Za-z]+)/?$")


class MLflowConfig(TargetConfig):
    tracking_uri: str = Field(min_length=1, description="MLflow tracking URI: database, file store or server.")
    registry_uri: str | None = Field(None, description="Model registry URI when it differs from tracking_uri.")
    action: Literal["quarantine", "delete"] = Field(
        description="quarantine: remove aliases and tag the versions; delete: delete versions, runs, artifacts."
    )
    registered_model: str | None = Field(
        None, min_length=1, description="Only act on this registered model's versions."
    )
    dataset_name: str | None = Field(
        None, description="Dataset scope only (a `datasets:` selector): every model trained on any build of it."
    )
    backend_store_uri: str | None = Field(
        None, description="With an http(s) tracking_uri and delete: the server's backend store (database URI or "
                          "file store), so lethe removes the soft-deleted rows itself, as `mlflow gc` does."
    )

    @field_validator("dataset_name")
    @classmethod
    def _dataset_name_is_a_dataset_selector(cls, name: str | None) -> str | None:
        # The worker puts a dataset's selector in with model_copy (no validation); in a target's own entry it
        # would widen every subject's erasure to the whole dataset.
        if name is not None:
            raise ValueError("dataset_name belongs in a `datasets:` selector (lethe submit --dataset), "
                             "not in the target's entry")
        return name

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        """A dataset (``datasets:`` in the map) is found by the name runs logged it under:
        ``{dataset_name: okcupid-2014}`` reaches the models trained on any build (digest) of it."""
        super().check_dataset_selector(selector)
        if set(selector) != {"dataset_name"}:
            raise ValueError("an mlflow dataset selector is {dataset_name: NAME} only")
        name = selector["dataset_name"]
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise ValueError("dataset_name must be a non-empty, printable string")

    @field_validator("tracking_uri", "registry_uri", "backend_store_uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        if not uri.strip():
            raise ValueError("must not be empty")
        scheme = uri_scheme(uri)
        if scheme not in DATABASE_SCHEMES | SERVER_SCHEMES | {"", "file"}:
            raise ValueError(
                f"unsupported MLflow URI scheme {scheme!r} (use a database URI such as sqlite:///mlruns.db, "
                "a file store path, or an http(s) tracking server)"
            )
        return uri

    @model_validator(mode="after")
    def _backend_store_is_for_delete_through_a_server(self) -> MLflowConfig:
        if self.backend_store_uri is None:
            return self
        if self.action != "delete" or uri_scheme(self.tracking_uri) not in SERVER_SCHEMES:
            raise ValueError("backend_store_uri is for action delete through an http(s) tracking server "
                             "(a database tracking_uri is the backend store already)")
        if uri_scheme(self.backend_store_uri) in SERVER_SCHEMES:
            raise ValueError("backend_store_uri is the tracking server's database URI or file store, "
                             "not an http(s) address")
        return self

    @property
    def through_server(self) -> bool:
        return uri_scheme(self.tracking_uri) in SERVER_SCHEMES


# -- what the selection found ------------------------------------------------------------------------------
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


class MLflowTarget:
    kind: ClassVar[str] = "mlflow"
    Config: ClassVar[type[TargetConfig]] = MLflowConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"lineage", "quarantine", "delete", "retrain_events"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = RETRYABLE_ERRORS
    level: str

    def __init__(self, config: MLflowConfig, context: TaskContext | None = None):
        self.config = config
        self.context = context
        if config.action == "quarantine":
            self.level = "quarantined"
        else:  # through a server the artifacts are deleted by its proxy, out of lethe's sight: see the docstring
            self.level = "invisible" if config.through_server else "bytes_reclaimed"
        self._purged_locations: list[str] = []

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        return len(self._pending(self._select()))

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        heartbeat()
        selection = self._select()
        pending = self._pending(selection)
        if self.config.action == "quarantine":
            for version in pending:
                self._quarantine(version)
                heartbeat()
            request_id = self._context().request_id
            acted = {(v.name, v.version) for v in pending}
            announced = [v for v in selection.versions
                         if (v.name, v.version) in acted or v.quarantined_by == request_id]
        else:
            self._delete(selection, pending, heartbeat)
            announced = pending
        self._announce(announced)
        return len(pending)

    def verify(self, subject: Subject) -> int:
        selection = self._select()
        if self.config.action == "quarantine":
            return sum(1 for v in selection.versions if not v.quarantined)
        leftover = selection.leftover_runs()
        if not leftover:  # (and MLflow is not opened for a subject in no dataset)
            runs = 0
        elif self._gc_store() is not None:  # the rows should be gone
            runs = len(leftover)
        else:  # soft-deleted rows are expected until the server's `mlflow gc`; their artifacts are not
            self._check_reachable_artifacts(selection.runs[rid].info.artifact_uri for rid in leftover)
            runs = sum(self._files_left(selection.runs[rid].info.artifact_uri) for rid in leftover)
        files = sum(self._files_left(uri) for uri in self._purged_locations)
        return len(selection.versions) + runs + files

    # -- selection --------------------------------------------------------------------------------
    def _context(self) -> TaskContext:
        if self.context is None:
            raise PermanentError("the mlflow target needs the task context (the subject's recorded datasets)")
        return self.context

    def _pending(self, selection: Selection) -> list[ModelVersionRef]:
        if self.config.action == "quarantine":
            return [v for v in selection.versions if not v.quarantined]
        return list(selection.versions)

    def _client(self) -> Any:
        return open_client(self.config.tracking_uri, self.config.registry_uri)

    def _gc_store(self) -> Any | None:
        """The tracking store that can hard-delete rows as `mlflow gc` does: the tracking store itself for a
        database or file store, the server's backend store when given, else None (rows stay soft-deleted)."""
        if self.config.through_server:
            if self.config.backend_store_uri is None:
                return None
            store = open_client(self.config.backend_store_uri, None)._tracking_client.store
        else:
            store = self._client()._tracking_client.store
        if not all(hasattr(store, m) for m in ("_hard_delete_run", "_hard_delete_logged_model")):
            raise PermanentError("MLflow tracking store cannot hard-delete runs (mlflow gc needs the backend store)")
        return store

    def _select(self) -> Selection:
        # (name, digest) pairs from lineage; a dataset request's selector names every build: (name, None)
        wanted: set[tuple[str, str | None]] = (
            {(self.config.dataset_name, None)} if self.config.dataset_name is not None
            else set(self._context().datasets)
        )
        if not wanted:
            return Selection()
        client = self._client()
        if self.config.registered_model is not None:
            with translate("GetRegisteredModel"):
                client.get_registered_model(self.config.registered_model)
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
        scope = self.config.registered_model
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

    # -- quarantine -------------------------------------------------------------------------------
    def _quarantine(self, version: ModelVersionRef) -> None:
        client = self._client()
        request_id = self._context().request_id
        for alias in version.aliases:
            gone_ok("DeleteRegisteredModelAlias", client.delete_registered_model_alias, version.name, alias)
        if version.stage in SERVING_STAGES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still served
                gone_ok("TransitionModelVersionStage", client.transition_model_version_stage,
                         version.name, version.version, "Archived")
        names = ", ".join(sorted({name for name, _ in version.datasets}))
        reason = f"erasure request {request_id}: trained on dataset {names}"[:TAG_VALUE_LIMIT]
        gone_ok("SetModelVersionTag", client.set_model_version_tag, version.name, version.version,
                 QUARANTINE_TAG, request_id)
        gone_ok("SetModelVersionTag", client.set_model_version_tag, version.name, version.version,
                 REASON_TAG, reason)

    # -- delete -----------------------------------------------------------------------------------
    def _delete(self, selection: Selection, pending: list[ModelVersionRef], heartbeat: Heartbeat) -> None:
        protected_runs = {v.run_id for v in selection.kept}
        protected_models = {v.model_id for v in selection.kept if v.model_id}
        backing = {v.run_id for v in pending} - protected_runs
        to_purge = backing | (selection.leftover_runs() - protected_runs)
        if not pending and not to_purge:
            return
        client = self._client()
        store = client._tracking_client.store  # reads, through the server when there is one
        gc = self._gc_store()
        if self.config.through_server:
            self._check_reachable_artifacts(selection.runs[rid].info.artifact_uri for rid in to_purge)

        # 1. mark the runs deleted: the versions still resolve, their artifacts are untouched
        for run_id in sorted(backing):
            if selection.runs[run_id].info.lifecycle_stage != "deleted":
                gone_ok("DeleteRun", client.delete_run, run_id)
        # 2. the versions go before any of their artifacts, so none points at emptied files
        for version in pending:
            gone_ok("DeleteModelVersion", client.delete_model_version, version.name, version.version)
            heartbeat()
        # 3. purge, as `mlflow gc`: artifacts first, then the rows (hard-deleted when lethe has the backend
        #    store; through a server alone they stay soft-deleted, lifecycle_stage "deleted")
        models = {v.model_id for v in pending if v.model_id}
        for run_id in sorted(to_purge):
            models |= self._logged_models_of(client, gc, selection.runs[run_id])
        for model_id in sorted(models - protected_models):
            self._purge_logged_model(client, store, gc, model_id)
            heartbeat()
        for run_id in sorted(to_purge):
            run = gone_ok("GetRun", store.get_run, run_id)
            if run is not None:
                self._delete_artifacts(run.info.artifact_uri)
                if gc is not None:
                    gone_ok("HardDeleteRun", gc._hard_delete_run, run_id)
            heartbeat()

    def _check_reachable_artifacts(self, uris: Iterable[str]) -> None:
        """Through a server, a run's artifacts must be reachable from here: a plain path would name the
        server's disk (a server without --serve-artifacts), and deleting it here would delete nothing there.
        Checked before anything is deleted."""
        if any(local_path(uri) is not None for uri in uris if uri):
            raise PermanentError("MLflow DeleteArtifacts: the artifacts are a path on the tracking server's disk; "
                                 "run the server with --serve-artifacts (mlflow-artifacts:) or use a remote store")

    def _logged_models_of(self, client: Any, gc: Any | None, run: Any) -> set[str]:
        """Logged models (MLflow 3) a run produced: live ones, and with the backend store the soft-deleted ones
        too (a server's search leaves those out; lethe deletes their artifacts before marking them)."""
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        found = {m.model_id for m in pages("SearchLoggedModels", client.search_logged_models, [experiment_id],
                                            filter_string=f"source_run_id = '{run_id}'", max_results=PAGE)}
        if gc is not None and hasattr(gc, "_get_deleted_logged_models"):
            with translate("GetDeletedLoggedModels"):
                deleted = gc._get_deleted_logged_models()
            for model_id in deleted:
                model = gone_ok("GetLoggedModel", gc.get_logged_model, model_id, allow_deleted=True)
                if model is not None and model.source_run_id == run_id:
                    found.add(model_id)
        return found

    def _purge_logged_model(self, client: Any, store: Any, gc: Any | None, model_id: str) -> None:
        # A live version registered from this logged model outside the selection keeps it.
        users = list(pages("SearchModelVersions", client.search_model_versions,
                            filter_string=f"source_path = 'models:/{model_id}'", max_results=PAGE))
        if users:
            return
        model = gone_ok("GetLoggedModel", store.get_logged_model, model_id, allow_deleted=True)
        if model is None:
            return
        self._delete_artifacts(model.artifact_location)
        if gc is not None:
            gone_ok("HardDeleteLoggedModel", gc._hard_delete_logged_model, model_id)
        else:  # soft: marked deleted, out of searches, until the server's `mlflow gc`
            gone_ok("DeleteLoggedModel", store.delete_logged_model, model_id)

    def _delete_artifacts(self, uri: str | None) -> None:
        if not uri:
            return

        with translate("DeleteArtifacts"):
            self._repository(uri).delete_artifacts()
        self._purged_locations.append(uri)
        # MLflow's layout: <root>/<run id>/artifacts, <root>/models/<model id>/artifacts; the emptied parent,
        # named by the run or model id, goes too
        path = local_path(uri)
        if path is not None:
            parent = path.parent
            if path.name == "artifacts" and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
            return
        self.level = "invisible"  # deleted through a server's proxy or a remote store: its disk is unseen
        base, _, last = uri.rstrip("/").rpartition("/")
        if last == "artifacts" and uri_scheme(uri) == "mlflow-artifacts":
            with translate("DeleteArtifacts"):
                parent = self._repository(base)
                if not parent.list_artifacts():
                    parent.delete_artifacts()

    def _repository(self, uri: str) -> Any:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(uri, tracking_uri=self.config.tracking_uri,
                                       registry_uri=self.config.registry_uri)

    def _files_left(self, uri: str) -> int:
        path = local_path(uri)
        if path is not None:
            if path.is_file():
                return 1
            return sum(len(files) for _, _, files in os.walk(path)) + (1 if path.is_dir() else 0)
        with translate("ListArtifacts"):
            return len(self._repository(uri).list_artifacts())

    # -- events -----------------------------------------------------------------------------------
    def _announce(self, versions: Iterable[ModelVersionRef]) -> None:
        context = self._context()
        by_model: dict[str, list[ModelVersionRef]] = defaultdict(list)
        for v in versions:
            by_model[v.name].append(v)
        for name, group in sorted(by_model.items()):
            group.sort(key=lambda v: int(v.version) if v.version.isdigit() else 0)
            latest = group[-1]
            datasets = sorted({d for v in group for d in v.datasets})
            context.emit(RETRAIN_EVENT, {
                "registered_model": name,
                "version": latest.version,
                "versions": [v.version for v in group],
                "dataset_name": latest.datasets[0][0],
                "dataset_digest": latest.datasets[0][1],
                "datasets": [{"name": n, "digest": d} for n, d in datasets],
                "shards": sorted({v.shard for v in group if v.shard is not None}),
                "action": self.config.action,
            })


# -- helpers -----------------------------------------------------------------------------------------------
