"""MLflowTarget beyond the contract: lineage matching, quarantine, delete down to the files, events, errors,
telemetry, the worker end to end, and lineage lookups at scale.

Real MLflow on a SQLite backend store with a local artifact root in tmp_path. Creating an MLflow database
runs its migrations (seconds), so one is made per session and copied for each test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import event, select

from orchestrator.identifiers import Subject, keyed_hash
from orchestrator.ledger.models import OutboxEvent, Task
from orchestrator.service import Lethe
from tests.contract.base import Beats
from tests.fixtures.lethe import SUBJECT_KEY
from tests.fixtures.services import MLflowServer
from workers.targets.base import PermanentError, RetryableError, TaskContext, build_target
from workers.targets.mlflow import (
    QUARANTINE_TAG,
    REASON_TAG,
    RETRAIN_EVENT,
    SHARD_TAG,
    MLflowConfig,
    MLflowTarget,
    load_mlflow,
)
from workers.targets.mlflow_api import local_path, translated, uri_scheme

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
REQUEST = "req-0001"
USER = "90210777"  # distinctive, so a scan for the raw identifier finds only real leaks


# -- shared with tests/contract/test_mlflow_contract.py ----------------------------------------------------
_template: list[Path] = []


def mlflow_template_db(factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow database, made once per session (migrations take seconds)."""
    if not _template:
        load_mlflow()
        from mlflow import MlflowClient

        path = factory.mktemp("mlflow-template") / "mlruns.db"
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        _template.append(path)
    return _template[0]


class Registry:
    """A real MLflow tracking store and registry, trains fake models with dataset inputs: a SQLite store in a
    folder, or a running tracking server (shared by the session: ``ns`` then makes this test's experiment
    and dataset digests its own, so no test reaches another's runs)."""

    def __init__(self, folder: Path, template: Path | None = None, server: MLflowServer | None = None) -> None:
        location: str | None
        if server is None:
            assert template is not None
            db = folder / "mlruns.db"
            shutil.copy(template, db)
            self.uri, self.artifacts, self.ns = f"sqlite:///{db}", folder / "artifacts", ""
            location = str(self.artifacts)
        else:  # the server picks mlflow-artifacts:/<experiment id>, served by its proxy from server.artifacts
            self.uri, self.artifacts, self.ns = server.uri, server.artifacts, f"-{uuid.uuid4().hex[:8]}"
            location = None
        self.weights = folder / "weights"
        self.weights.mkdir()
        (self.weights / "weights.bin").write_bytes(os.urandom(64))
        (self.weights / "MLmodel").write_text("flavors: {}\n")
        mlflow = load_mlflow()
        from mlflow import MlflowClient

        # create_model_version resolves a models:/ source through the default tracking URI
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = self.client.create_experiment(f"training{self.ns}", artifact_location=location)
        self.models: set[str] = set()

    def run(self, datasets: list[tuple[str, str]]) -> str:
        """A training run consuming ``datasets`` (name, digest), with a checkpoint artifact. Returns its id."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        run_id: str = self.client.create_run(self.experiment).info.run_id
        if datasets:
            self.client.log_inputs(run_id, [
                DatasetInput(Dataset(name=name, digest=digest, source_type="local", source=f"/data/{name}"),
                             [InputTag("mlflow.data.context", "training")])
                for name, digest in datasets])
        self.client.log_artifacts(run_id, str(self.weights), "checkpoint")
        return run_id

    def register(self, model: str, run_id: str, alias: str | None = None, shard: str | None = None,
                 logged_model: bool = True, stage: str | None = None) -> str:
        """A registered version of the run's model: from a logged model (MLflow 3's layout) or from the run's
        artifacts. Returns the version."""
        if model not in self.models:
            from mlflow.exceptions import MlflowException

            try:
                self.client.create_registered_model(model)
            except MlflowException as exc:  # on the shared server an earlier test made it
                assert exc.error_code == "RESOURCE_ALREADY_EXISTS"
            self.models.add(model)
        if logged_model:
            logged = self.client.create_logged_model(self.experiment, source_run_id=run_id, name="model")
            self.client.log_model_artifacts(logged.model_id, str(self.weights))
            source, model_id = f"models:/{logged.model_id}", logged.model_id
        else:
            source, model_id = f"{self.client.get_run(run_id).info.artifact_uri}/checkpoint", None
        version = str(self.client.create_model_version(model, source=source, run_id=run_id,
                                                       model_id=model_id).version)
        if alias:
            self.client.set_registered_model_alias(model, alias, version)
        if shard is not None:
            self.client.set_model_version_tag(model, version, SHARD_TAG, shard)
        if stage:
            with pytest.warns(FutureWarning):
                self.client.transition_model_version_stage(model, version, stage)
        return version

    def train(self, model: str, datasets: list[tuple[str, str]], **register: Any) -> str:
        """A run on ``datasets`` and one registered version from it."""
        return self.register(model, self.run(datasets), **register)

    def get(self, model: str, version: str) -> Any | None:
        """The live model version, or None when it is deleted."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(model, version)
        except MlflowException as exc:
            assert exc.error_code == "RESOURCE_DOES_NOT_EXIST"
            return None

    def serving(self, model: str, version: str) -> bool:
        """Live and not quarantined: an alias points at it, or it lacks the quarantine tag."""
        mv = self.get(model, version)
        return mv is not None and (bool(mv.aliases) or QUARANTINE_TAG not in mv.tags)

    def all_versions(self) -> list[Any]:
        return [self.client.get_model_version(mv.name, mv.version)
                for mv in self.client.search_model_versions(max_results=1000)]

    def files(self) -> list[str]:
        """Every artifact file on disk, relative to the artifact root."""
        if not self.artifacts.exists():
            return []
        return sorted(str(p.relative_to(self.artifacts)) for p in self.artifacts.rglob("*") if p.is_file())

    def close(self) -> None:
        load_mlflow().set_tracking_uri(None)


def make_registry(tmp_path: Path, factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A Registry for one test; on tmpfs when there is one, since MLflow commits (and fsyncs) every write."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="lethe-mlflow-", dir=shm if os.access(shm, os.W_OK) else tmp_path) as d:
        registry = Registry(Path(d), mlflow_template_db(factory))
        yield registry
        registry.close()


def make_server_registry(tmp_path: Path, server: MLflowServer) -> Iterator[Registry]:
    """A Registry on the session's tracking server, for one test."""
    registry = Registry(tmp_path, server=server)
    yield registry
    registry.close()


def subject(user_id: str = USER) -> Subject:
    return Subject.parse({"user_id": user_id}, {"user_id": None})


def user_hash(user_id: str) -> str:
    return keyed_hash(bytes.fromhex(SUBJECT_KEY), "user_id", user_id)


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture
def registry(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from make_registry(tmp_path, tmp_path_factory)


def target_for(registry: Registry, action: str, datasets: list[tuple[str, str]], **config: Any) -> MLflowTarget:
    context = TaskContext(REQUEST, {"user_id": user_hash(USER)}, datasets)
    cfg = MLflowConfig(name="face-models", kind="mlflow", tracking_uri=registry.uri, action=action, **config)
    return MLflowTarget(cfg, context=context)


A = ("photos-a", "a1b2c3d4")
B = ("photos-b", "b5e6f7a8")


# -- quarantine ---------------------------------------------------------------------------------------------
def test_quarantine_removes_aliases_and_tags_versions_with_the_request(registry: Registry) -> None:
    """Every alias and serving stage of a reached version goes; it is tagged with the request and a reason."""
    v1 = registry.train("faces", [A], alias="champion")
    registry.client.set_registered_model_alias("faces", "canary", v1)
    v2 = registry.train("faces", [A], stage="Production", logged_model=False)
    v3 = registry.train("faces", [B], alias="challenger")
    target = target_for(registry, "quarantine", [A])
    assert target.count(subject()) == 2
    assert target.purge(subject(), Beats()) == 2
    assert target.verify(subject()) == 0
    assert target.level == "quarantined"
    for version in (v1, v2):
        mv = registry.get("faces", version)
        assert mv is not None and mv.aliases == []
        assert mv.tags[QUARANTINE_TAG] == REQUEST
        assert mv.tags[REASON_TAG] == f"erasure request {REQUEST}: trained on dataset photos-a"
        assert USER not in mv.tags[REASON_TAG]
    assert registry.get("faces", v2).current_stage == "Archived"
    kept = registry.get("faces", v3)
    assert kept.aliases == ["challenger"] and QUARANTINE_TAG not in kept.tags
    assert registry.client.get_registered_model("faces").aliases == {"challenger": int(v3)}
    assert target.purge(subject(), Beats()) == 0  # idempotent


def test_a_version_trained_on_two_datasets_is_reached_through_either(registry: Registry) -> None:
    """A run that consumed datasets A and B is reached by a subject in A and by a subject in B."""
    both = registry.train("faces", [A, B], alias="champion")
    only_b = registry.train("faces", [B], alias="b-only")
    assert target_for(registry, "quarantine", [A]).count(subject()) == 1
    assert target_for(registry, "quarantine", [B]).count(subject()) == 2
    target = target_for(registry, "quarantine", [A])
    assert target.purge(subject(), Beats()) == 1
    assert not registry.serving("faces", both) and registry.serving("faces", only_b)
    # the reason names the dataset that holds the subject, not every dataset the run consumed
    assert registry.get("faces", both).tags[REASON_TAG].endswith("trained on dataset photos-a")


def test_a_dataset_with_the_same_name_and_another_digest_does_not_match(registry: Registry) -> None:
    """Runs on another build of the dataset (same name, other digest) are not the subject's."""
    old = registry.train("faces", [("photos-a", "00000000")], alias="old")
    new = registry.train("faces", [A], alias="new")
    target = target_for(registry, "quarantine", [A])
    assert target.purge(subject(), Beats()) == 1
    assert registry.serving("faces", old) and not registry.serving("faces", new)
    assert target_for(registry, "quarantine", [("photos-a", "ffffffff")]).count(subject()) == 0


def test_only_the_shard_that_holds_the_subject_is_quarantined(registry: Registry) -> None:
    """In a sharded (SISA) ensemble only the shard trained on the subject's dataset stops serving."""
    shards = {k: registry.train("ensemble", [(f"shard-{k}", f"d{k}")], alias=f"shard-{k}", shard=str(k))
              for k in range(4)}
    target = target_for(registry, "quarantine", [("shard-2", "d2")])
    assert target.purge(subject(), Beats()) == 1
    assert [k for k, v in shards.items() if registry.serving("ensemble", v)] == [0, 1, 3]
    (event_type, data), = target.context.events  # type: ignore[union-attr]
    assert event_type == RETRAIN_EVENT and data["shards"] == ["2"] and data["versions"] == [shards[2]]


def test_retrain_requested_is_emitted_once_per_affected_model(registry: Registry) -> None:
    """One event per registered model, naming its versions and datasets, never the subject."""
    f1 = registry.train("faces", [A], alias="champion")
    f2 = registry.train("faces", [A, B])
    a1 = registry.train("attributes", [B])
    registry.train("unrelated", [("other", "0f0f0f0f")])
    target = target_for(registry, "quarantine", [A, B])
    assert target.count(subject()) == 3
    assert target.context.events == []  # type: ignore[union-attr]  # a dry run announces nothing
    target.purge(subject(), Beats())
    events = target.context.events  # type: ignore[union-attr]
    assert [(t, d["registered_model"]) for t, d in events] == [(RETRAIN_EVENT, "attributes"),
                                                                (RETRAIN_EVENT, "faces")]
    faces = events[1][1]
    assert faces == {"registered_model": "faces", "version": f2, "versions": [f1, f2],
                     "dataset_name": "photos-a", "dataset_digest": A[1],
                     "datasets": [{"name": "photos-a", "digest": A[1]}, {"name": "photos-b", "digest": B[1]}],
                     "shards": [], "action": "quarantine"}
    assert events[0][1]["versions"] == [a1]
    assert USER not in json.dumps(events) and user_hash(USER) not in json.dumps(events)


def test_a_subject_in_no_dataset_touches_nothing(registry: Registry, tmp_path: Path) -> None:
    """Without a recorded dataset nothing is reached, and MLflow is not even opened."""
    registry.train("faces", [A], alias="champion")
    assert target_for(registry, "delete", []).purge(subject(), Beats()) == 0
    missing = MLflowTarget(MLflowConfig(name="m", kind="mlflow", tracking_uri=f"sqlite:///{tmp_path}/none.db",
                                        action="delete"), context=TaskContext(REQUEST, {}, ()))
    assert missing.count(subject()) == missing.purge(subject(), Beats()) == missing.verify(subject()) == 0
    assert not (tmp_path / "none.db").exists()
    assert len(registry.all_versions()) == 1 and registry.files()


def test_a_dataset_request_reaches_every_build_of_the_named_dataset(registry: Registry) -> None:
    """The map's {dataset_name: N} selector (dataset scope) reaches runs on any digest of N and nothing else."""
    builds = [registry.train("faces", [("photos-a", digest)], alias=f"build-{digest}") for digest in ("a1", "a2")]
    other = registry.train("faces", [B], alias="b")
    base = MLflowConfig(name="face-models", kind="mlflow", tracking_uri=registry.uri, action="quarantine")
    base.check_dataset_selector({"dataset_name": "photos-a"})
    config = base.model_copy(update={"dataset_name": "photos-a"})  # what the worker does for a dataset request
    target = MLflowTarget(config, context=TaskContext(REQUEST, {}, ()))
    nobody = Subject({})
    assert target.count(nobody) == 2
    assert target.purge(nobody, Beats()) == 2 and target.verify(nobody) == 0
    assert [registry.serving("faces", v) for v in (*builds, other)] == [False, False, True]


@pytest.mark.parametrize("selector", [
    {}, {"dataset_name": ""}, {"dataset_name": 5}, {"dataset_name": "{user_id}"},
    {"dataset_name": "photos-a", "action": "delete"}, {"registered_model": "faces"},
])
def test_a_dataset_selector_is_a_dataset_name_only(selector: dict[str, Any]) -> None:
    """Only {dataset_name: literal} can select a dataset; other fields, placeholders and blanks are refused."""
    config = MLflowConfig(name="m", kind="mlflow", tracking_uri="sqlite:///mlruns.db", action="quarantine")
    with pytest.raises(ValueError):
        config.check_dataset_selector(selector)


# -- delete -------------------------------------------------------------------------------------------------
def test_delete_removes_versions_runs_logged_models_and_their_files(registry: Registry) -> None:
    """Delete leaves no version, run, logged model or artifact file of the reached models on disk."""
    gone = [registry.train("faces", [A], alias="champion"), registry.train("faces", [A], logged_model=False)]
    kept = registry.train("faces", [B], alias="challenger")
    runs = {registry.get("faces", v).run_id for v in gone}
    kept_run = registry.get("faces", kept).run_id
    target = target_for(registry, "delete", [A])
    assert target.count(subject()) == 2
    assert target.purge(subject(), Beats()) == 2
    assert target.verify(subject()) == 0
    assert target.level == "bytes_reclaimed"
    assert [registry.get("faces", v) for v in gone] == [None, None]
    from mlflow.entities import ViewType

    left_runs = {r.info.run_id for r in registry.client.search_runs([registry.experiment],
                                                                     run_view_type=ViewType.ALL)}
    assert left_runs == {kept_run}
    assert all(run not in f for run in runs for f in registry.files())
    kept_model = registry.get("faces", kept).source.removeprefix("models:/")
    assert registry.files() == sorted([f"{kept_run}/artifacts/checkpoint/MLmodel",
                                       f"{kept_run}/artifacts/checkpoint/weights.bin",
                                       f"models/{kept_model}/artifacts/MLmodel",
                                       f"models/{kept_model}/artifacts/weights.bin"])
    assert sorted(p.name for p in registry.artifacts.iterdir()) == sorted([kept_run, "models"])
    assert registry.client.get_registered_model("faces").aliases == {"challenger": int(kept)}
    assert target.purge(subject(), Beats()) == 0 and target.verify(subject()) == 0


def test_delete_finishes_what_an_interrupted_attempt_left(registry: Registry) -> None:
    """A run marked deleted whose versions are gone (a crash mid-purge) is purged by the next attempt."""
    version = registry.train("faces", [A])
    run_id = registry.get("faces", version).run_id
    registry.client.delete_run(run_id)
    registry.client.delete_model_version("faces", version)
    target = target_for(registry, "delete", [A])
    assert target.verify(subject()) == 1  # the run is residue
    assert target.purge(subject(), Beats()) == 0  # no version acted on
    assert target.verify(subject()) == 0
    assert not any(run_id in f for f in registry.files())


def test_delete_keeps_a_run_that_backs_a_model_outside_the_scope(registry: Registry) -> None:
    """With registered_model set, a run that also backs another model's live version keeps its files."""
    version = registry.train("faces", [A], logged_model=False)
    mv = registry.get("faces", version)
    other = registry.client.create_registered_model("audit-copy").name
    other_version = registry.client.create_model_version(other, source=mv.source, run_id=mv.run_id).version
    target = target_for(registry, "delete", [A], registered_model="faces")
    assert target.purge(subject(), Beats()) == 1
    assert target.verify(subject()) == 0
    assert registry.get("faces", version) is None
    assert registry.get(other, str(other_version)) is not None
    assert any(mv.run_id in f for f in registry.files())  # the other version's files are intact


# -- delete through a tracking server ----------------------------------------------------------------------
@pytest.fixture
def server_registry(tmp_path: Path, mlflow_server: MLflowServer) -> Iterator[Registry]:
    yield from make_server_registry(tmp_path, mlflow_server)


def server_target(registry: Registry, datasets: list[tuple[str, str]], **config: Any) -> MLflowTarget:
    """A delete target on the session's server; dataset digests carry the registry's namespace."""
    context = TaskContext(REQUEST, {"user_id": user_hash(USER)}, datasets)
    cfg = MLflowConfig(name="face-models", kind="mlflow", tracking_uri=registry.uri, action="delete", **config)
    return MLflowTarget(cfg, context=context)


def _ids(mv: Any) -> set[str]:
    """The run id and, for a version registered from a logged model, the model id (``models:/m-…``)."""
    source = mv.source or ""
    return {mv.run_id} | ({source.removeprefix("models:/")} if source.startswith("models:/") else set())


def _on_disk(registry: Registry, ids: set[str]) -> list[str]:
    """Files and directories on the server's artifact disk named by one of ``ids``."""
    return [str(p) for p in registry.artifacts.rglob("*") if any(i in p.name for i in ids)]


def _seed_server(registry: Registry) -> tuple[list[str], str, set[str]]:
    """Two versions trained on A (a logged model; the run's own artifacts), one on B (kept). Returns the
    doomed versions, the kept one, and the ids (runs, logged models) whose files must go."""
    a, b = ("photos-a", f"a1b2{registry.ns}"), ("photos-b", f"b5e6{registry.ns}")
    gone = [registry.train("faces", [a], alias="champion"), registry.train("faces", [a], logged_model=False)]
    kept = registry.train("faces", [b], alias="challenger")
    ids = set().union(*(_ids(registry.get("faces", version)) for version in gone))
    assert len(ids) == 3  # two runs, one logged model
    return gone, kept, ids


def test_delete_through_a_tracking_server_leaves_only_soft_deleted_rows(server_registry: Registry) -> None:
    """Through `mlflow server` alone: the versions are deleted, the runs' and logged models' artifacts are
    deleted through the artifact proxy (no file or directory named by them is left on the server's disk),
    the runs and logged models are soft-deleted (rows kept until the server's `mlflow gc`), the level says
    ``invisible``; the other model's version, run and files are intact."""
    registry = server_registry
    gone, kept, ids = _seed_server(registry)
    kept_mv = registry.get("faces", kept)
    kept_files = _on_disk(registry, _ids(kept_mv))
    assert _on_disk(registry, ids) and kept_files
    target = server_target(registry, [("photos-a", f"a1b2{registry.ns}")])
    assert target.count(subject()) == 2 and _on_disk(registry, ids)  # the dry run deleted nothing
    assert target.purge(subject(), Beats()) == 2
    assert target.verify(subject()) == 0
    assert target.level == "invisible"
    assert [registry.get("faces", v) for v in gone] == [None, None]
    assert _on_disk(registry, ids) == []
    runs = [registry.client.get_run(i) for i in ids if not i.startswith("m-")]
    assert [r.info.lifecycle_stage for r in runs] == ["deleted", "deleted"]  # soft: the row stays
    from mlflow.exceptions import MlflowException

    for model_id in (i for i in ids if i.startswith("m-")):
        with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
            registry.client.get_logged_model(model_id)
    assert registry.get("faces", kept) is not None
    assert registry.client.get_run(kept_mv.run_id).info.lifecycle_stage == "active"
    assert _on_disk(registry, _ids(kept_mv)) == kept_files
    assert str(registry.client.get_registered_model("faces").aliases["challenger"]) == kept  # REST: a str
    assert target.purge(subject(), Beats()) == 0 and target.verify(subject()) == 0


def test_delete_through_a_server_with_its_backend_store_removes_the_rows(
    server_registry: Registry, mlflow_server: MLflowServer
) -> None:
    """With ``backend_store_uri`` lethe does the server's `mlflow gc` for the reached runs and logged models:
    their rows are gone too, while the other model's run stays."""
    registry = server_registry
    gone, kept, ids = _seed_server(registry)
    target = server_target(registry, [("photos-a", f"a1b2{registry.ns}")],
                           backend_store_uri=mlflow_server.backend_store_uri)
    assert target.purge(subject(), Beats()) == 2
    assert target.verify(subject()) == 0
    assert target.level == "invisible"  # the artifacts went through the proxy, to a disk lethe does not read
    assert [registry.get("faces", v) for v in gone] == [None, None]
    from mlflow.entities import ViewType

    left = {r.info.run_id for r in registry.client.search_runs([registry.experiment], run_view_type=ViewType.ALL)}
    assert left == {registry.get("faces", kept).run_id}
    assert _on_disk(registry, ids) == []
    from mlflow.exceptions import MlflowException

    for model_id in (i for i in ids if i.startswith("m-")):
        with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
            registry.client._tracking_client.store.get_logged_model(model_id, allow_deleted=True)


def test_delete_through_a_server_finishes_what_an_interrupted_attempt_left(server_registry: Registry) -> None:
    """A run soft-deleted with its version gone but its artifacts still on the server (an attempt that died
    mid-purge, or someone's `mlflow runs delete`) is residue; the next purge deletes the artifacts."""
    registry = server_registry
    dataset = ("photos-a", f"a1b2{registry.ns}")
    version = registry.train("faces", [dataset], logged_model=False)
    run_id = registry.get("faces", version).run_id
    registry.client.delete_run(run_id)
    registry.client.delete_model_version("faces", version)
    target = server_target(registry, [dataset])
    assert target.verify(subject()) > 0 and _on_disk(registry, {run_id})
    assert target.purge(subject(), Beats()) == 0  # no version acted on
    assert target.verify(subject()) == 0
    assert _on_disk(registry, {run_id}) == []


def test_delete_through_a_server_refuses_artifacts_on_the_servers_own_disk(
    server_registry: Registry, tmp_path: Path
) -> None:
    """An experiment whose artifact location is a plain path (a server without --serve-artifacts) cannot be
    purged from here: refused before anything is deleted, naming no path."""
    registry = server_registry
    registry.experiment = registry.client.create_experiment(f"local{registry.ns}",
                                                            artifact_location=str(tmp_path / "server-disk"))
    version = registry.train("faces", [("photos-a", f"a1b2{registry.ns}")], alias="champion")
    target = server_target(registry, [("photos-a", f"a1b2{registry.ns}")])
    with pytest.raises(PermanentError, match="--serve-artifacts") as info:
        target.purge(subject(), Beats())
    assert str(tmp_path) not in str(info.value)
    mv = registry.get("faces", version)
    assert mv is not None and mv.aliases == ["champion"]
    assert registry.client.get_run(mv.run_id).info.lifecycle_stage == "active"
    # nor can it be verified from here: its files on the server's disk are not lethe's to count
    registry.client.delete_run(mv.run_id)
    registry.client.delete_model_version("faces", version)
    with pytest.raises(PermanentError, match="--serve-artifacts"):
        target.verify(subject())


# -- configuration and errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "message"), [
    ({"tracking_uri": "foo://bar"}, "unsupported MLflow URI scheme"),
    ({"tracking_uri": "   "}, "must not be empty"),
    ({"registry_uri": "gopher://x"}, "unsupported MLflow URI scheme"),
    ({"backend_store_uri": "sqlite:///mlruns.db", "action": "delete"}, "through an http"),
    ({"tracking_uri": "http://mlflow:5000", "backend_store_uri": "sqlite:///mlruns.db"}, "through an http"),
    ({"tracking_uri": "http://mlflow:5000", "action": "delete", "backend_store_uri": "https://m"}, "not an http"),
    ({"tracking_uri": "http://mlflow:5000", "action": "delete", "backend_store_uri": "gopher://x"}, "unsupported"),
    ({"action": "archive"}, "Input should be 'quarantine' or 'delete'"),
    ({"dataset_name": "photos-a"}, "belongs in a `datasets:` selector"),
])
def test_config_refuses_bad_uris_and_a_misplaced_backend_store(fields: dict[str, str], message: str) -> None:
    """Unknown URI schemes, a backend_store_uri anywhere but beside a server's address for delete, and a
    dataset selector in the target's own entry are refused when the map is loaded. Delete through a tracking
    server is accepted (it was refused before the server path existed)."""
    base = {"name": "m", "kind": "mlflow", "tracking_uri": "sqlite:///mlruns.db", "action": "quarantine"}
    with pytest.raises(ValidationError, match=message):
        MLflowConfig.model_validate({**base, **fields})
    through_server = MLflowConfig.model_validate({**base, "tracking_uri": "http://mlflow:5000", "action": "delete"})
    assert through_server.through_server and MLflowTarget(through_server).level == "invisible"


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_a_uri_is_a_local_path_only_without_a_scheme(uri: str) -> None:
    """Whatever the text, a URI with a scheme (``mlflow-artifacts:/…``, ``s3://…``) is never taken for a local
    path, which lethe would delete on its own disk; the scheme is lowercase with no driver suffix."""
    scheme = uri_scheme(uri)
    assert scheme == scheme.lower() and "+" not in scheme and ":" not in scheme
    if scheme not in ("", "file"):
        assert local_path(uri) is None
    if ":" not in uri:
        assert scheme == ""  # a path


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9.-]{1,15}", fullmatch=True), st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_a_scheme_without_slashes_is_still_a_scheme(scheme: str, rest: str) -> None:
    """``mlflow-artifacts:/1/<run>/artifacts`` (the artifact proxy's form) has a scheme though no ``//``:
    taken for a path, a run's artifacts would be looked for on lethe's own disk."""
    uri = f"{scheme}:{rest}"
    assert uri_scheme(uri) == scheme.lower()
    assert (local_path(uri) is None) == (scheme.lower() != "file")
    assert uri_scheme("mlflow-artifacts:/1/r/artifacts") == "mlflow-artifacts"


@pytest.mark.parametrize(("status", "error"), [(503, RetryableError), (429, RetryableError), (404, PermanentError)])
def test_an_artifact_proxy_answer_is_translated_by_its_status(status: int, error: type[Exception]) -> None:
    """The artifact proxy raises requests' HTTPError: 5xx and 429 retry, anything else fails for good."""
    response = requests.Response()
    response.status_code = status
    error_seen = translated("DeleteArtifacts", requests.HTTPError(response=response))
    assert type(error_seen) is error and str(error_seen) == f"MLflow DeleteArtifacts: HTTP {status}"


def test_the_spec_config_validates_and_builds_with_its_context() -> None:
    """The SPEC's entry is valid, needs no identifier, and build_target hands the adapter its context."""
    config = MLflowConfig.model_validate({"name": "face-models", "kind": "mlflow", "tracking_uri": "sqlite:///mlruns.db",
                                          "action": "quarantine", "after": ["profile-photos"], "max_items": 20})
    assert config.required_identifiers() == set()
    context = TaskContext(REQUEST, {}, [A])
    target = build_target(config, context)
    assert isinstance(target, MLflowTarget) and target.context is context


def test_an_unreachable_tracking_server_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracking server that refuses connections raises RetryableError naming no address."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket closes
    target = MLflowTarget(MLflowConfig(name="m", kind="mlflow", tracking_uri=f"http://127.0.0.1:{port}",
                                       action="quarantine"), context=TaskContext(REQUEST, {}, [A]))
    with pytest.raises(RetryableError) as info:
        target.count(subject())
    assert str(info.value) == "MLflow SearchExperiments: INTERNAL_ERROR"


def test_a_missing_registered_model_or_database_is_permanent(registry: Registry, tmp_path: Path) -> None:
    """A registered_model that does not exist, or a SQLite store that is not there, fails for good."""
    registry.train("faces", [A])
    with pytest.raises(PermanentError, match=r"^MLflow GetRegisteredModel: RESOURCE_DOES_NOT_EXIST$"):
        target_for(registry, "quarantine", [A], registered_model="no-such-model").purge(subject(), Beats())
    missing = MLflowTarget(MLflowConfig(name="m", kind="mlflow", tracking_uri=f"sqlite:///{tmp_path}/gone.db",
                                        action="quarantine"), context=TaskContext(REQUEST, {}, [A]))
    with pytest.raises(PermanentError, match="does not exist") as info:
        missing.verify(subject())
    assert str(tmp_path) not in str(info.value)
    assert not (tmp_path / "gone.db").exists()


def test_telemetry_is_off_and_mlflow_is_imported_only_when_used() -> None:
    """Loading the adapter and its config imports no MLflow; using it leaves MLflow without telemetry."""
    probe = (
        "import os, sys\n"
        "from workers.targets.base import target_class\n"
        "cls = target_class('mlflow')\n"
        "cls.Config.model_validate({'name': 'm', 'kind': 'mlflow', 'tracking_uri': 'sqlite:///x.db',"
        " 'action': 'delete'})\n"
        "assert 'mlflow' not in sys.modules, 'eager import'\n"
        "from workers.targets.mlflow import load_mlflow\n"
        "load_mlflow()\n"
        "from mlflow.telemetry import get_telemetry_client\n"
        "from mlflow.telemetry.utils import is_telemetry_disabled\n"
        "print(get_telemetry_client(), is_telemetry_disabled(), os.environ['MLFLOW_DISABLE_TELEMETRY'],"
        " os.environ['DO_NOT_TRACK'])\n"
    )
    # Without the CI/pytest markers MLflow itself treats as "no telemetry", so the probe shows lethe's doing.
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
                        "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TRAVIS", "CIRCLECI", "TF_BUILD"}}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True", "true", "true"]


# -- through the worker ------------------------------------------------------------------------------------
MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - name: face-models
    kind: mlflow
    tracking_uri: "{uri}"
    action: quarantine
"""


def test_erasure_through_the_worker_quarantines_and_announces(
    registry: Registry, pg_database: str, redis_broker: str, write_map: Callable[[str], Path],
    make_lethe: Callable[..., Lethe],
) -> None:
    """A request through Redis, a worker and the PostgreSQL ledger quarantines exactly the models trained on
    the subject's recorded dataset, records level and count, and announces one retrain per model, once."""
    reached = [registry.train("faces", [A], alias="champion"), registry.train("attributes", [A])]
    other = registry.train("faces", [B], alias="challenger")
    lethe = make_lethe(database_url=pg_database, broker_url=redis_broker,
                       data_map=write_map(MAP.format(uri=registry.uri)))
    lethe.ledger.record_lineage(*A, [user_hash(u) for u in (USER, "5", "6")])
    lethe.ledger.record_lineage(*B, [user_hash(u) for u in ("5", "7")])
    with lethe.embedded_worker(concurrency=2):
        request_id, _ = lethe.submit({"user_id": USER})
        status = lethe.wait(request_id, timeout=60)
        assert status["status"] == "completed", status
        (task,) = status["tasks"]
        assert (task["deleted"], task["residue"], task["level"]) == (2, 0, "quarantined")
        assert not registry.serving("faces", reached[0]) and not registry.serving("attributes", reached[1])
        assert registry.serving("faces", other)

        def retrain_events() -> list[dict[str, Any]]:
            with lethe.ledger.sessions() as s:
                return [json.loads(e.body) for e in s.scalars(
                    select(OutboxEvent).where(OutboxEvent.type == RETRAIN_EVENT).order_by(OutboxEvent.id))]

        events = retrain_events()
        assert [e["data"]["registered_model"] for e in events] == ["attributes", "faces"]
        assert all(e["data"]["request_id"] == request_id and e["data"]["dataset_name"] == A[0] for e in events)
        assert USER not in json.dumps(events)
        # the same task delivered again changes nothing and writes no second record or event
        with lethe.ledger.sessions() as s:
            task_id = s.scalars(select(Task.id).where(Task.request_id == request_id)).one()
        lethe.app.send_task("lethe.purge", args=[task_id], queue="purge.mlflow")
        time.sleep(1.5)
        assert lethe.ledger.completion_record_count(request_id) == 1
        assert len(retrain_events()) == 2
    certificate = lethe.ledger.certificate(request_id)
    assert [(t["target"], t["deleted"], t["level"]) for t in certificate["targets"]] == [
        ("face-models", 2, "quarantined")]


# -- lineage at scale (smoke) -------------------------------------------------------------------------------
def test_datasets_for_is_one_indexed_lookup_on_postgresql(pg_database: str, make_lethe: Callable[..., Lethe],
                                                          write_map: Callable[[str], Path]) -> None:
    """20,000 members load by COPY; a subject's datasets come from an index scan on the subject hash."""
    lethe = make_lethe(database_url=pg_database, data_map=write_map(MAP.format(uri="sqlite:///unused.db")))
    ledger = lethe.ledger
    key = bytes.fromhex(SUBJECT_KEY)
    start = time.perf_counter()
    assert ledger.record_lineage("big", "d-big", (keyed_hash(key, "user_id", str(n)) for n in range(20_000))) == 20_000
    ledger.record_lineage("small", "d-small", [keyed_hash(key, "user_id", "12345")])
    assert time.perf_counter() - start < 10
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "dataset_members" in statement:
            statements.append((statement, parameters))

    event.listen(ledger.engine, "before_cursor_execute", capture)
    try:
        assert ledger.datasets_for([keyed_hash(key, "user_id", "12345")]) == [("big", "d-big"), ("small", "d-small")]
        assert ledger.datasets_for([keyed_hash(key, "user_id", "20000")]) == []
    finally:
        event.remove(ledger.engine, "before_cursor_execute", capture)
    statement, parameters = statements[0]
    with ledger.engine.connect() as conn:
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    assert "Index Scan on ix_dataset_members_subject_hash" in plan or \
        "Index Only Scan using ix_dataset_members_subject_hash" in plan or \
        "Index Scan using ix_dataset_members_subject_hash" in plan, plan
    assert "Seq Scan on dataset_members" not in plan, plan
