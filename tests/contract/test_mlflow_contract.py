"""MLflowTarget runs the target contract against real MLflow, with lineage recorded in a real ledger, for both
actions: on a SQLite backend store with a local artifact root, and through a running `mlflow server`.

The contract's "items" are registered model versions. Each seeded subject is in its own training dataset
(with a member who is never seeded), and two versions are trained on it: a shard of a shared ensemble
(logged model, MLflow 3 layout, alias ``shard-<id>``) and the subject's own model (from the run's artifacts,
alias ``champion``), both registered from one training run. Unowned versions: one trained on a dataset
nobody seeded, one on another build (same name, other digest) of subject 12's dataset, one with no dataset
input at all.

The worker builds a ``TaskContext`` per task from the ledger; the contract calls one target with several
subjects, so ``LineageTarget`` (the real adapter, subclassed) does what the worker does before each call:
``ledger.datasets_for(subject hashes)`` on a real ledger whose lineage ``seed`` recorded with
``record_lineage``. Quarantine's "remaining" are versions still serving (an alias, or no quarantine tag);
delete's are versions that still exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.identifiers import Subject, keyed_hash
from orchestrator.ledger import Ledger
from tests.contract.base import SUBJECT, Beats, ContractStore, TargetContract, subject
from tests.fixtures.services import MLflowServer
from tests.workers.targets.test_mlflow import Registry, make_registry, make_server_registry
from workers.targets.base import Heartbeat, TaskContext
from workers.targets.mlflow import QUARANTINE_TAG, MLflowConfig, MLflowTarget

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """The contract's lineage lives in an SQLite ledger (PostgreSQL lineage: tests/workers/targets/test_mlflow.py)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


class LineageTarget(MLflowTarget):
    """The adapter, given a fresh TaskContext from the ledger's lineage for each subject, as the worker does."""

    def __init__(self, config: MLflowConfig, ledger: Ledger, key: bytes) -> None:
        super().__init__(config, context=TaskContext("req-contract", {}, ()))
        self.ledger, self.key = ledger, key

    def _for(self, who: Subject) -> None:
        hashes = who.hashes(self.key)
        self.context = TaskContext("req-contract", hashes, self.ledger.datasets_for(hashes.values()))

    def count(self, subject: Subject) -> int:
        self._for(subject)
        return super().count(subject)

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        self._for(subject)
        return super().purge(subject, heartbeat)

    def verify(self, subject: Subject) -> int:
        self._for(subject)
        return super().verify(subject)


class MLflowStore:
    """Seeds trained model versions and the lineage of their datasets; reads the registry back directly."""

    def __init__(self, registry: Registry, ledger: Ledger, key: bytes, action: str) -> None:
        self.registry, self.ledger, self.key, self.action = registry, ledger, key, action
        self.owned: dict[str, list[tuple[str, str]]] = {}
        ns = registry.ns  # on a shared tracking server, this test's datasets are its own
        self.ledger.record_lineage("photos-public", f"p0{ns}", [self._hash("4242")])
        self.registry.train("public-faces", [("photos-public", f"p0{ns}")], alias="champion")
        self.ledger.record_lineage("photos-12", f"old-build{ns}", [self._hash("4343")])
        self.registry.train("ensemble", [("photos-12", f"old-build{ns}")], alias="old-build")
        self.registry.train("baseline", [], alias="champion")

    def _hash(self, user_id: str) -> str:
        return keyed_hash(self.key, "user_id", user_id)

    def seed(self, user_id: str) -> int:
        dataset = (f"photos-{user_id}", f"digest-{user_id}{self.registry.ns}")
        self.ledger.record_lineage(*dataset, [self._hash(user_id), self._hash(f"7{user_id}")])
        run_id = self.registry.run([dataset])  # one training run registers two models
        self.owned[user_id] = [
            ("ensemble", self.registry.register("ensemble", run_id, alias=f"shard-{user_id}", shard=user_id)),
            (f"attrs-{user_id}", self.registry.register(f"attrs-{user_id}", run_id, alias="champion",
                                                        logged_model=False)),
        ]
        return len(self.owned[user_id])

    def _counts(self, model: str, version: str) -> bool:
        if self.action == "delete":
            return self.registry.get(model, version) is not None
        return self.registry.serving(model, version)

    def remaining(self, user_id: str) -> int:
        return sum(self._counts(m, v) for m, v in self.owned.get(user_id, []))

    def total(self) -> int:
        versions = self.registry.all_versions()
        if self.action == "delete":
            return len(versions)
        return sum(1 for mv in versions if mv.aliases or QUARANTINE_TAG not in mv.tags)


class MLflowContract(TargetContract):
    action = "quarantine"

    @pytest.fixture
    def registry(self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
        yield from make_registry(tmp_path, tmp_path_factory)

    @pytest.fixture
    def store(self, registry: Registry, ledger: Ledger, subject_key: bytes) -> ContractStore:
        return MLflowStore(registry, ledger, subject_key, self.action)

    @pytest.fixture
    def target(self, store: ContractStore, registry: Registry, ledger: Ledger, subject_key: bytes) -> LineageTarget:
        config = MLflowConfig(name="face-models", kind="mlflow", tracking_uri=registry.uri, action=self.action)
        return LineageTarget(config, ledger, subject_key)


class TestMLflowQuarantineContract(MLflowContract):
    action = "quarantine"

    def test_quarantined_versions_have_no_alias_and_carry_the_request(
        self, target: LineageTarget, store: MLflowStore, registry: Registry, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Subject 12's versions lose their aliases and carry the tag; 123's shard keeps its alias."""
        target.purge(subject(SUBJECT), beats)
        for model, version in store.owned[SUBJECT]:
            mv = registry.get(model, version)
            assert mv is not None and mv.aliases == [] and mv.tags[QUARANTINE_TAG] == "req-contract"
        aliases = registry.client.get_registered_model("ensemble").aliases
        assert "shard-12" not in aliases and {"shard-123", "shard-1234", "shard-112", "old-build"} <= set(aliases)
        assert target.level == "quarantined"


class TestMLflowDeleteContract(MLflowContract):
    action = "delete"
    level = "bytes_reclaimed"

    def test_deleted_versions_leave_no_artifact_files(
        self, target: LineageTarget, store: MLflowStore, registry: Registry, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Subject 12's runs and logged models are purged from disk; everyone else's files stay."""
        runs = {registry.get(m, v).run_id for m, v in store.owned[SUBJECT]}
        before = registry.files()
        target.purge(subject(SUBJECT), beats)
        after = registry.files()
        assert after and set(after) < set(before)
        assert not any(run in f for run in runs for f in after)
        assert len(before) - len(after) == 2 + 2  # the run's checkpoint, the shard's logged model
        assert target.level == self.level


class TestMLflowServerQuarantineContract(TestMLflowQuarantineContract):
    """The same, through a running `mlflow server` (REST API), as users deploy it."""

    @pytest.fixture
    def registry(self, tmp_path: Path, mlflow_server: MLflowServer) -> Iterator[Registry]:
        yield from make_server_registry(tmp_path, mlflow_server)


class TestMLflowServerDeleteContract(TestMLflowDeleteContract):
    """Delete through a running `mlflow server`: versions deleted, artifacts deleted through its proxy
    (``mlflow-artifacts:``), runs and logged models soft-deleted. ``invisible``: the rows stay until the
    server's `mlflow gc`, and the proxy's disk is the server's, not lethe's (this test reads it directly)."""

    level = "invisible"

    @pytest.fixture
    def registry(self, tmp_path: Path, mlflow_server: MLflowServer) -> Iterator[Registry]:
        yield from make_server_registry(tmp_path, mlflow_server)
