"""QdrantTarget runs the target contract on real Qdrant local mode, with 10k+ vectors and 400+ subjects.

Two layouts: the owner field stored as a string (10,000 filler points of 400 other subjects, the large
estate), and stored as an integer (2,000 filler points, with a few of each contract subject's points
still stored as strings, as in a collection whose writers changed over time); the physical-erasure
checks run on the smaller one. Local mode commits one row per point, so each layout is written once per
session into a template folder and copied for every test.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.contract.base import OTHERS, SUBJECT, Beats, ContractStore, TargetContract, subject
from workers.targets import qdrant as qdrant_module
from workers.targets.qdrant import QdrantConfig, QdrantTarget

pytestmark = pytest.mark.integration

COLLECTION = "faces"
FIELD = "subject_id"
DIM = 16
FILLER_PER_OWNER = 25
# Subjects never erased here: 10,000 filler points in the string layout (the contract's 10k+ estate;
# local mode warns, an error here, above 20,000), 2,000 in the integer variant. Local mode evaluates
# filters point by point in Python, so each operation costs ~0.2 s per 10k points.
FILLER_OWNERS = {"str": 400, "int": 80}
PER_SUBJECT = 25  # points seed() writes for a contract subject
AS_STRING_IN_INT_LAYOUT = 5  # of those, stored as a string in the integer layout
# Values that are not subject 12's, though each resembles it; unowned points carry them.
NEAR_MISSES: dict[str, list[Any]] = {
    "str": ["012", "12 ", " 12", "+12", "12.0", "121", "1 2", "12a", "a12", "-12", "12-", "1.2"],
    "int": [120, 1200, 21, -12, 112_0, "012", "12.0", "+12", "12 ", "1 2"],
}

_templates: dict[str, Path] = {}
_ids = count(1_000_000)  # point ids for per-test seeding, clear of the template's


def owner_value(layout: str, user_id: str) -> str | int:
    """How the layout stores ``user_id`` in the owner field."""
    return int(user_id) if layout == "int" else user_id


def marker(user_id: str, n: int) -> str:
    """A payload string unique to one point of one subject, searched for in the raw files."""
    return f"MARK-{user_id}-{n}-"


def vectors_near(seed: int, n: int) -> np.ndarray:
    """``n`` unit vectors clustered around a centre of their own, so a subject's vectors are each
    other's nearest neighbours."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=DIM)
    points = centre + 0.15 * rng.normal(size=(n, DIM))
    normed: np.ndarray = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return normed


def _sqlite(client: Any) -> Any:
    """The SQLite connection local mode stores the collection through (a qdrant-client internal), or None."""
    try:
        return client._client.collections[COLLECTION].storage.storage
    except (AttributeError, KeyError):
        return None


def _fast_writes(client: Any) -> None:
    """Seeding only: skip SQLite's per-point fsync (local mode commits every point). The setting lives on
    the open connection, which a purge replaces when it reopens the folder."""
    storage = _sqlite(client)
    if storage is not None:  # else another client layout: seeding is only slower
        storage.execute("PRAGMA synchronous=OFF")


def template(tmp_path_factory: pytest.TempPathFactory, layout: str) -> Path:
    """A closed local-mode folder holding the filler estate of ``layout``, built once per session."""
    from qdrant_client import QdrantClient, models

    if layout in _templates:
        return _templates[layout]
    folder = tmp_path_factory.mktemp(f"qdrant-template-{layout}")
    client = QdrantClient(path=str(folder))
    try:
        client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=DIM,
                                                                                distance=models.Distance.COSINE))
        _fast_writes(client)
        next_id = count(1)
        for owner in range(FILLER_OWNERS[layout]):
            user_id = str(5000 + owner)
            vectors = vectors_near(10_000 + owner, FILLER_PER_OWNER)  # seeds clear of the subjects'
            client.upsert(COLLECTION, [
                models.PointStruct(id=next(next_id), vector=vectors[n].tolist(),
                                   payload={FIELD: owner_value(layout, user_id), "m": marker(user_id, n)})
                for n in range(FILLER_PER_OWNER)
            ])
        unowned = vectors_near(99_999, len(NEAR_MISSES[layout]) + 3)
        payloads: list[dict[str, Any]] = [{FIELD: value, "m": "near-miss"} for value in NEAR_MISSES[layout]]
        payloads += [{"other": "12"}, {FIELD: None}, {"m": "no owner"}]
        client.upsert(COLLECTION, [
            models.PointStruct(id=next(next_id), vector=unowned[n].tolist(), payload=payload)
            for n, payload in enumerate(payloads)
        ])
    finally:
        client.close()
    _templates[layout] = folder
    return folder


class QdrantContractStore:
    """A copy of a template estate; seed() adds a contract subject's clustered points."""

    def __init__(self, location: Path, layout: str) -> None:
        self.location, self.layout = str(location), layout
        self.vectors: dict[str, list[list[float]]] = {}  # what seed() wrote, per subject
        self.point_ids: dict[str, list[int]] = {}

    def client(self) -> Any:
        # Always through the cache: the folder admits one client, and a purge reopens it.
        return qdrant_module.qdrant_client(location=self.location)

    def seed(self, user_id: str) -> int:
        from qdrant_client import models

        vectors = vectors_near(int(user_id), PER_SUBJECT)
        ids = [next(_ids) for _ in range(PER_SUBJECT)]
        points = []
        for n, (point_id, vector) in enumerate(zip(ids, vectors, strict=True)):
            value: str | int = owner_value(self.layout, user_id)
            if self.layout == "int" and n < AS_STRING_IN_INT_LAYOUT:
                value = user_id
            points.append(models.PointStruct(id=point_id, vector=vector.tolist(),
                                             payload={FIELD: value, "m": marker(user_id, n)}))
        client = self.client()
        _fast_writes(client)
        client.upsert(COLLECTION, points)
        self.vectors[user_id] = [v.tolist() for v in vectors]
        self.point_ids[user_id] = ids
        return PER_SUBJECT

    def _count(self, value: str | int) -> int:
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key=FIELD, match=models.MatchValue(value=value))])
        return int(self.client().count(COLLECTION, count_filter=flt, exact=True).count)

    def remaining(self, user_id: str) -> int:
        """Points whose owner field is the subject's value, stored as a string or (integer layout) an
        integer; the string layout stores no owner as an integer."""
        return self._count(user_id) + (self._count(int(user_id)) if self.layout == "int" else 0)

    def total(self) -> int:
        return int(self.client().count(COLLECTION, exact=True).count)

    def owner_values(self) -> Counter[Any]:
        """How many points hold each owner value, read in one scroll (cheaper than a count per value)."""
        records, _ = self.client().scroll(COLLECTION, limit=100_000, with_payload=[FIELD])
        return Counter((record.payload or {}).get(FIELD) for record in records)

    def raw_bytes(self) -> bytes:
        """Every file of the local folder, concatenated: what a disk image would show."""
        return b"".join(p.read_bytes() for p in sorted(Path(self.location).rglob("*")) if p.is_file())


def local_store(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, layout: str) -> Iterator[QdrantContractStore]:
    """A fresh copy of the layout's template; every cached client is closed afterwards."""
    location = tmp_path / "vectors"
    shutil.copytree(template(tmp_path_factory, layout), location)
    try:
        yield QdrantContractStore(location, layout)
    finally:
        qdrant_module.close_clients()


def make_target(store: QdrantContractStore) -> QdrantTarget:
    return QdrantTarget(QdrantConfig(name="face-embeddings", kind="qdrant", location=store.location,
                                     collection=COLLECTION, match={FIELD: "{user_id}"}))


class TestQdrantStringPayloadContract(TargetContract):
    @pytest.fixture
    def store(self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractStore]:
        yield from local_store(tmp_path, tmp_path_factory, "str")

    @pytest.fixture
    def target(self, store: QdrantContractStore) -> QdrantTarget:
        return make_target(store)

    def test_near_misses_survive(
        self, target: QdrantTarget, store: QdrantContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """On the 10k-point estate, owner values like '012', '12 ', '+12' or '121' are not 12's and stay."""
        assert store.total() > 10_000
        target.purge(subject(SUBJECT), beats)
        owners = store.owner_values()
        assert {value: owners[value] for value in NEAR_MISSES["str"]} == dict.fromkeys(NEAR_MISSES["str"], 1)
        assert owners[SUBJECT] == 0


class TestQdrantIntegerPayloadContract(TargetContract):
    @pytest.fixture
    def store(self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractStore]:
        yield from local_store(tmp_path, tmp_path_factory, "int")

    @pytest.fixture
    def target(self, store: QdrantContractStore) -> QdrantTarget:
        return make_target(store)

    def test_level_is_bytes_reclaimed(
        self, target: QdrantTarget, store: QdrantContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Local mode vacuums the collection's SQLite file, so the purge reports bytes_reclaimed."""
        target.purge(subject(SUBJECT), beats)
        assert target.level == "bytes_reclaimed"

    def test_payload_bytes_are_gone_from_disk(
        self, target: QdrantTarget, store: QdrantContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """No file under the local folder still holds a byte of the erased subject's payload, even where
        SQLite leaves deleted rows in free pages (built without secure_delete, simulated here)."""
        assert f"MARK-{SUBJECT}-".encode() in store.raw_bytes()
        storage = _sqlite(store.client())
        assert storage is not None, "qdrant-client's local storage changed: review the adapter's VACUUM"
        storage.execute("PRAGMA secure_delete=OFF")
        target.purge(subject(SUBJECT), beats)
        raw = store.raw_bytes()
        assert f"MARK-{SUBJECT}-".encode() not in raw
        assert all(f"MARK-{uid}-".encode() in raw for uid in OTHERS)

    def test_worker_memory_holds_no_copy(
        self, target: QdrantTarget, store: QdrantContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Local mode masks deleted points in memory; the purge reopens the folder so the worker's client
        no longer holds the subject's payloads either."""
        def payloads() -> str:
            return repr(store.client()._client.collections[COLLECTION].payload)  # a qdrant-client internal

        assert f"MARK-{SUBJECT}-" in payloads()
        target.purge(subject(SUBJECT), beats)
        assert f"MARK-{SUBJECT}-" not in payloads()
        assert all(f"MARK-{uid}-" in payloads() for uid in OTHERS)

    def test_integer_and_string_forms_both_go(
        self, target: QdrantTarget, store: QdrantContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """With no index saying the type, both 12 and '12' are the subject's and both are erased."""
        assert store._count(int(SUBJECT)) == PER_SUBJECT - AS_STRING_IN_INT_LAYOUT
        assert store._count(SUBJECT) == AS_STRING_IN_INT_LAYOUT
        assert target.purge(subject(SUBJECT), beats) == PER_SUBJECT
        assert store._count(int(SUBJECT)) == 0 and store._count(SUBJECT) == 0

    def test_integer_near_misses_survive(
        self, target: QdrantTarget, store: QdrantContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """120, 1200, 21, -12 and strings like '012' or '12.0' stay when 12 is erased."""
        target.purge(subject(SUBJECT), beats)
        owners = store.owner_values()
        assert {value: owners[value] for value in NEAR_MISSES["int"]} == dict.fromkeys(NEAR_MISSES["int"], 1)
        assert owners[int(SUBJECT)] == 0 and owners[SUBJECT] == 0
