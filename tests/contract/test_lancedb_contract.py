"""LanceDBTarget runs the target contract against real LanceDB tables on disk, 10k+ rows with vectors.

Two owner columns: a string column, and an int64 column (the selector value is converted to the
column's type). Each subject's rows are written in one batch together with rows of nobody, so purges
delete from fragments that also hold other rows and compaction must rewrite them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.contract.base import NOBODY, SUBJECT, Beats, ContractStore, TargetContract, subject
from workers.targets.lancedb import LanceDBConfig, LanceDBTarget

pytestmark = pytest.mark.integration

DIM = 16
BACKGROUND = 2600  # rows of nobody written with every batch (and once when the table is created)
PER_SUBJECT = {SUBJECT: 80, "123": 60, "1234": 40, "112": 30}


class LanceStore:
    """A LanceDB database with table ``faces``: ``id``, an owner column and a 16-dim vector.

    String owners of nobody share the subjects' text (``120``, ``012``, ``12 ``, ``x12``); integer owners
    of nobody include 0, 120 and 1200 so a value converted to zero or a widened comparison shows."""

    def __init__(self, root: Path, integer: bool) -> None:
        import lancedb

        self.location, self.integer = str(root), integer
        self.rng = np.random.default_rng(4711)
        self.serial = 0
        owner_type = pa.int64() if integer else pa.string()
        self.schema = pa.schema([("id", pa.string()), ("owner", owner_type),
                                 ("vector", pa.list_(pa.float32(), DIM))])
        self.db = lancedb.connect(self.location)
        self.table = self.db.create_table("faces", self._batch([]), schema=self.schema)

    def _nobody(self, n: int) -> list[Any]:
        if self.integer:
            pool: list[Any] = [0, 120, 1200, 121, 1123, 11, 2, *range(2000, 2100)]
        else:
            pool = ["120", "012", "12 ", "x12", "12x", "1 2", "u-5", *(f"user-{k}" for k in range(100))]
        return [pool[i % len(pool)] for i in range(n)]

    def _batch(self, owners: list[Any]) -> pa.Table:
        rows = self._nobody(BACKGROUND) + owners
        order = self.rng.permutation(len(rows))  # the subject's rows are spread among nobody's
        owners_mixed = [rows[i] for i in order]
        ids = [f"item-{self.serial + i}" for i in range(len(rows))]
        self.serial += len(rows)
        vectors = self.rng.random((len(rows), DIM), dtype=np.float32)
        return pa.table({"id": ids, "owner": pa.array(owners_mixed, self.schema.field("owner").type),
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)},
                        schema=self.schema)

    def seed(self, user_id: str) -> int:
        owner: Any = int(user_id) if self.integer else user_id
        n = PER_SUBJECT[user_id]
        self.table.add(self._batch([owner] * n))
        return n

    def _owners(self) -> pa.ChunkedArray:
        table = self.db.open_table("faces")
        return table.to_arrow().column("owner")

    def remaining(self, user_id: str) -> int:
        owner: Any = int(user_id) if self.integer else user_id
        return int(pc.sum(pc.equal(self._owners(), pa.scalar(owner, self.schema.field("owner").type))).as_py() or 0)

    def total(self) -> int:
        return len(self._owners())


class LanceContract(TargetContract):
    integer = False

    @pytest.fixture
    def store(self, tmp_path: Path) -> ContractStore:
        return LanceStore(tmp_path / "vectors", self.integer)

    @pytest.fixture
    def target(self, store: LanceStore) -> LanceDBTarget:
        return LanceDBTarget(LanceDBConfig(name="faces", kind="lancedb", location=store.location,
                                           table="faces", match={"owner": "{user_id}"}))

    def test_table_is_large_and_mixed(self, store: LanceStore, seeded: dict[str, int]) -> None:
        """The seeded table holds 10k+ rows and each subject's rows share fragments with nobody's."""
        assert store.total() >= 10_000
        fragments = store.db.open_table("faces").to_lance().get_fragments()
        assert len(fragments) == 1 + len(seeded)
        assert all(f.count_rows() > PER_SUBJECT[SUBJECT] for f in fragments)

    def test_no_version_keeps_the_subject(
        self, target: LanceDBTarget, store: LanceStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """After the purge only one table version remains and it is erased to the level bytes_reclaimed."""
        assert len(store.db.open_table("faces").list_versions()) > 1
        target.purge(subject(SUBJECT), beats)
        assert [v["version"] for v in store.db.open_table("faces").list_versions()] == [
            store.db.open_table("faces").version
        ]
        assert target.level == "bytes_reclaimed"
        assert beats.calls >= 5  # at least once per stage

    def test_nearest_neighbours_of_the_subject_find_only_others(
        self, target: LanceDBTarget, store: LanceStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """verify() searches a vector index with the subject's own vectors; before the purge that finds the
        subject (without an index a search only reads the rows the count does, so verify skips it)."""
        from lancedb.index import IvfFlat

        target.purge(subject(NOBODY), beats)  # reads nothing: no probes
        assert target.probes == {}
        store.db.open_table("faces").create_index("vector", config=IvfFlat(num_partitions=4))  # exact: all probed
        probe_target = LanceDBTarget(target.config)
        owned = store.db.open_table("faces").to_arrow()
        mask = pc.equal(owned.column("owner"), pa.scalar(int(SUBJECT) if store.integer else SUBJECT,
                                                         owned.schema.field("owner").type))
        vectors = owned.filter(mask).column("vector").to_pylist()
        probe_target.probes, probe_target._probes_for = {"vector": vectors}, (("user_id", SUBJECT),)
        # Every probe finds at least its own row: residue counts rows by filter plus search hits.
        assert probe_target.verify(subject(SUBJECT)) >= 2 * seeded[SUBJECT]
        probe_target.purge(subject(SUBJECT), beats)
        assert probe_target.probes["vector"] and probe_target.verify(subject(SUBJECT)) == 0


class TestLanceDBStringContract(LanceContract):
    integer = False


class TestLanceDBIntegerContract(LanceContract):
    integer = True
