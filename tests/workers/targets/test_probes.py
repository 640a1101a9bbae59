"""`check-map --probe` per adapter, on the real engines in local mode: a store that is there probes clean,
a missing one is one line naming it (Qdrant's collection, LanceDB's table, MLflow's tracking store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.targets.base import target_class
from workers.targets.probes import probe_target

pytestmark = pytest.mark.integration
MATCH = {"user_id": "{user_id}"}


def test_qdrant_probe_finds_a_missing_collection(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path))
    client.create_collection("faces", vectors_config=models.VectorParams(size=2, distance=models.Distance.COSINE))
    client.close()
    config = target_class("qdrant").Config
    assert probe_target(config(name="v", kind="qdrant", location=str(tmp_path), collection="faces", match=MATCH),
                        []) == []
    assert probe_target(config(name="v", kind="qdrant", location=str(tmp_path), collection="face", match=MATCH),
                        []) == ["Qdrant collection face does not exist"]


def test_qdrant_probe_names_an_unreachable_server() -> None:
    config = target_class("qdrant").Config(name="v", kind="qdrant", url="http://127.0.0.1:1", collection="faces",
                                           match=MATCH)
    assert probe_target(config, []) == ["Qdrant get collection on collection faces: ConnectError"]


def test_lancedb_probe_finds_a_missing_table(tmp_path: Path) -> None:
    import lancedb

    lancedb.connect(str(tmp_path)).create_table("faces", data=[{"user_id": 1, "vector": [0.1, 0.2]}])
    config = target_class("lancedb").Config
    assert probe_target(config(name="v", kind="lancedb", location=str(tmp_path), table="faces", match=MATCH),
                        []) == []
    assert probe_target(config(name="v", kind="lancedb", location=str(tmp_path), table="face", match=MATCH),
                        []) == ["LanceDB open on table face: not found"]


def test_mlflow_probe_finds_a_missing_tracking_store(tmp_path: Path) -> None:
    config = target_class("mlflow").Config(name="m", kind="mlflow", tracking_uri=f"sqlite:///{tmp_path}/none.db",
                                           action="quarantine")
    assert probe_target(config, []) == ["MLflow tracking database (sqlite) does not exist"]
    assert not (tmp_path / "none.db").exists()  # the probe creates no empty store


def test_feast_probe_loads_the_repo_and_finds_a_missing_feature_view(tmp_path: Path) -> None:
    from orchestrator.demo_estate import DEMO_VIEWS, build_demo_repo

    repo = build_demo_repo(tmp_path / "repo", ["1", "2"], rows_per_user=1)
    config = target_class("feast").Config
    fields = {"name": "f", "kind": "feast", "repo_path": str(repo.path), "entity": "user_id"}
    assert probe_target(config.model_validate(fields), []) == []
    missing = probe_target(config.model_validate({**fields, "feature_views": [DEMO_VIEWS[0], "no_such_view"]}), [])
    assert len(missing) == 1 and "no_such_view" in missing[0], missing
    assert probe_target(config.model_validate({**fields, "repo_path": str(tmp_path / "none")}), [])
