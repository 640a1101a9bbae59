"""What the MLflow target does to the versions it reached: ``quarantine`` withdraws them from serving and
tags them; ``delete`` deletes the versions, then purges their runs and logged models (artifacts first, then
the rows, as ``mlflow gc`` does). The rules and the levels: ``workers/targets/mlflow.py``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

from workers.targets.base import Heartbeat, PermanentError
from workers.targets.mlflow_api import PAGE, gone_ok, local_path, open_client, pages, translate, uri_scheme
from workers.targets.mlflow_config import MLflowConfig
from workers.targets.mlflow_lineage import QUARANTINE_TAG, SERVING_STAGES, ModelVersionRef, Selection

REASON_TAG = "lethe.reason"
TAG_VALUE_LIMIT = 5000  # MLflow's limit for a model version tag value


def quarantine(client: Any, version: ModelVersionRef, request_id: str) -> None:
    """Withdraw a version from serving (aliases removed, a legacy serving stage archived) and tag it with the
    request and the datasets it was trained on."""
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


def check_reachable_artifacts(uris: Iterable[str]) -> None:
    """Through a server, a run's artifacts must be reachable from here: a plain path would name the
    server's disk (a server without --serve-artifacts), and deleting it here would delete nothing there.
    Checked before anything is deleted."""
    if any(local_path(uri) is not None for uri in uris if uri):
        raise PermanentError("MLflow DeleteArtifacts: the artifacts are a path on the tracking server's disk; "
                             "run the server with --serve-artifacts (mlflow-artifacts:) or use a remote store")


class ModelDeletion:
    """The ``delete`` action of one target instance. It remembers the artifact locations it purged (verify
    reads them back) and whether any went through a server's proxy or a remote store, out of lethe's sight
    (the target's level drops to ``invisible``)."""

    def __init__(self, config: MLflowConfig):
        self.config = config
        self.purged_locations: list[str] = []
        self.unseen = False

    def client(self) -> Any:
        return open_client(self.config.tracking_uri, self.config.registry_uri)

    def gc_store(self) -> Any | None:
        """The tracking store that can hard-delete rows as `mlflow gc` does: the tracking store itself for a
        database or file store, the server's backend store when given, else None (rows stay soft-deleted)."""
        if self.config.through_server:
            if self.config.backend_store_uri is None:
                return None
            store = open_client(self.config.backend_store_uri, None)._tracking_client.store
        else:
            store = self.client()._tracking_client.store
        if not all(hasattr(store, m) for m in ("_hard_delete_run", "_hard_delete_logged_model")):
            raise PermanentError("MLflow tracking store cannot hard-delete runs (mlflow gc needs the backend store)")
        return store

    def delete(self, selection: Selection, pending: list[ModelVersionRef], heartbeat: Heartbeat) -> None:
        protected_runs = {v.run_id for v in selection.kept}
        protected_models = {v.model_id for v in selection.kept if v.model_id}
        backing = {v.run_id for v in pending} - protected_runs
        to_purge = backing | (selection.leftover_runs() - protected_runs)
        if not pending and not to_purge:
            return
        client = self.client()
        store = client._tracking_client.store  # reads, through the server when there is one
        gc = self.gc_store()
        if self.config.through_server:
            check_reachable_artifacts(selection.runs[rid].info.artifact_uri for rid in to_purge)

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
        self.purged_locations.append(uri)
        # MLflow's layout: <root>/<run id>/artifacts, <root>/models/<model id>/artifacts; the emptied parent,
        # named by the run or model id, goes too
        path = local_path(uri)
        if path is not None:
            parent = path.parent
            if path.name == "artifacts" and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
            return
        self.unseen = True  # deleted through a server's proxy or a remote store: its disk is unseen
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

    def files_left(self, uri: str) -> int:
        path = local_path(uri)
        if path is not None:
            if path.is_file():
                return 1
            return sum(len(files) for _, _, files in os.walk(path)) + (1 if path.is_dir() else 0)
        with translate("ListArtifacts"):
            return len(self._repository(uri).list_artifacts())
