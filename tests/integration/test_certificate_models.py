"""The certificate names the models a request quarantined or deleted (registered name and versions), from
a real MLflow registry through Redis, a worker and the PostgreSQL ledger."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.certificates import parse_public_keys, verify_certificate
from orchestrator.service import Lethe
from tests.workers.targets.test_mlflow import USER, A, B, Registry, make_registry, user_hash

pytestmark = pytest.mark.integration
MAP = """
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - name: face-models
    kind: mlflow
    tracking_uri: "{uri}"
    action: {action}
  - {{name: sessions, kind: memory, store: sessions, match: {{owner: "{{user_id}}"}}}}
"""


@pytest.fixture
def registry(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from make_registry(tmp_path, tmp_path_factory)


@pytest.mark.parametrize("action", ["quarantine", "delete"])
def test_the_certificate_names_the_models_the_request_acted_on(
    registry: Registry, action: str, pg_database: str, redis_broker: str, write_map: Callable[[str], Path],
    make_lethe: Callable[..., Lethe],
) -> None:
    """Two versions of faces and one of attributes trained on the subject's dataset are named with their
    versions; the model trained only on another dataset is not; the certificate still verifies, and a
    request that reached no model names none."""
    faces = [registry.train("faces", [A], alias="champion"), registry.train("faces", [A])]
    attributes = registry.train("attributes", [A])
    registry.train("faces", [B], alias="challenger")  # another dataset: not the subject's
    lethe = make_lethe(database_url=pg_database, broker_url=redis_broker,
                       data_map=write_map(MAP.format(uri=registry.uri, action=action)))
    lethe.ledger.record_lineage(*A, [user_hash(u) for u in (USER, "5")])
    with lethe.embedded_worker(concurrency=2):
        reached, _ = lethe.submit({"user_id": USER})
        untouched, _ = lethe.submit({"user_id": "6"})  # in no recorded dataset
        assert lethe.wait(reached, timeout=90)["status"] == "completed"
        assert lethe.wait(untouched, timeout=90)["status"] == "completed"

    certificate = lethe.ledger.certificate(reached)
    assert certificate["models"] == [
        {"target": "face-models", "registered_model": "attributes", "versions": [attributes], "action": action},
        {"target": "face-models", "registered_model": "faces", "versions": sorted(faces, key=int), "action": action},
    ]
    assert USER not in json.dumps(certificate)
    keys = parse_public_keys(lethe.ledger.public_key_pem())
    assert verify_certificate(json.dumps(certificate).encode(), keys)["models"] == certificate["models"]
    assert "models" not in lethe.ledger.certificate(untouched)
    assert lethe.ledger.verify() == []
