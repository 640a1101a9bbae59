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

Modules: the entry (``mlflow_config.py``), the selection (``mlflow_lineage.py``), the actions
(``mlflow_actions.py``) and MLflow's client, URIs and errors (``mlflow_api.py``).

Errors: a tracking server that cannot be reached, 429/5xx answers (``INTERNAL_ERROR``,
``TEMPORARILY_UNAVAILABLE``, …), an artifact proxy's 5xx/429 and database connection failures are
RetryableError; a bad URI, a missing
SQLite file (it would be created empty, and every subject would verify 0), a missing ``registered_model``
and any other error are PermanentError. "Does not exist" while deleting is success. Messages name the
operation and MLflow's error code, never a path, a run id or an identifier.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from orchestrator.identifiers import Subject
from workers.targets.base import Heartbeat, PermanentError, TargetConfig, TaskContext
from workers.targets.mlflow_actions import REASON_TAG, ModelDeletion, check_reachable_artifacts, quarantine
from workers.targets.mlflow_api import RETRYABLE_ERRORS, load_mlflow, mlflow_client, open_client
from workers.targets.mlflow_config import MLflowConfig
from workers.targets.mlflow_lineage import QUARANTINE_TAG, SHARD_TAG, ModelVersionRef, Selection, select_versions
from workers.targets.probes import probe_mlflow

__all__ = ["QUARANTINE_TAG", "REASON_TAG", "RETRAIN_EVENT", "SHARD_TAG", "MLflowConfig", "MLflowTarget",
           "load_mlflow", "mlflow_client"]  # load_mlflow, mlflow_client: the demo builds its registry with them

RETRAIN_EVENT = "lethe.model.retrain_requested"


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
        self._deletion = ModelDeletion(config)

    # -- the contract -----------------------------------------------------------------------------
    def probe(self, earlier: Sequence[TargetConfig]) -> list[str]:
        """The tracking store answers, and the registered model the map names exists (``base.Probed``)."""
        return probe_mlflow(self.config)

    def count(self, subject: Subject) -> int:
        return len(self._pending(self._select()))

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        heartbeat()
        selection = self._select()
        pending = self._pending(selection)
        if self.config.action == "quarantine":
            for version in pending:
                quarantine(self._client(), version, self._context().request_id)
                heartbeat()
            request_id = self._context().request_id
            acted = {(v.name, v.version) for v in pending}
            announced = [v for v in selection.versions
                         if (v.name, v.version) in acted or v.quarantined_by == request_id]
        else:
            try:
                self._deletion.delete(selection, pending, heartbeat)
            finally:  # artifacts deleted out of lethe's sight lower the level, even if the purge stopped
                if self._deletion.unseen:
                    self.level = "invisible"
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
        elif self._deletion.gc_store() is not None:  # the rows should be gone
            runs = len(leftover)
        else:  # soft-deleted rows are expected until the server's `mlflow gc`; their artifacts are not
            check_reachable_artifacts(selection.runs[rid].info.artifact_uri for rid in leftover)
            runs = sum(self._deletion.files_left(selection.runs[rid].info.artifact_uri) for rid in leftover)
        files = sum(self._deletion.files_left(uri) for uri in self._deletion.purged_locations)
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

    def _select(self) -> Selection:
        # (name, digest) pairs from lineage; a dataset request's selector names every build: (name, None)
        wanted: set[tuple[str, str | None]] = (
            {(self.config.dataset_name, None)} if self.config.dataset_name is not None
            else set(self._context().datasets)
        )
        if not wanted:
            return Selection()
        return select_versions(self._client(), wanted, self.config.registered_model)

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


