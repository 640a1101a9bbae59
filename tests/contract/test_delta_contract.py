"""DeltaTarget runs the target contract on real Delta tables on disk (deltalake), with history.

Each seeded subject is one commit of their rows mixed with rows of nobody (look-alike owners), so the table
has several versions and every version before the purge reads the subject. Two owner column types: string
and int64. After a purge, every version that can still be loaded, every Parquet file under the table and
every log entry are read back directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from orchestrator.identifiers import Subject
from tests.contract import lake
from tests.contract.base import OTHERS, SUBJECT, Beats, TargetContract, subject
from workers.targets.delta import DeltaConfig, DeltaTarget, predicate

pytestmark = pytest.mark.integration

class DeltaStore(lake.HistoryStore):
    def __init__(self, root: Path, integer: bool) -> None:
        self.uri = str(root)
        super().__init__(integer)

    def _append(self, owners: list[str]) -> None:
        write_deltalake(self.uri, pa.table(self.rows(owners)), mode="append")

    def owners(self, version: int | None = None) -> pa.ChunkedArray:
        # delta-rs writes rewritten strings as string_view: compare in one type
        return DeltaTable(self.uri, version=version).to_pyarrow_table(columns=["owner"]).column("owner").cast(
            self.owner_type)

    def remaining(self, user_id: str) -> int:
        return int(pc.sum(pc.equal(self.owners(), pa.scalar(self._owner(user_id), self.owner_type))).as_py() or 0)

    def total(self) -> int:
        return len(self.owners())

    def rows_in_every_file(self, user_id: str) -> int:
        """The subject's rows in every Parquet file under the table, referenced or not (the log apart)."""
        found = 0
        for path in Path(self.uri).rglob("*.parquet"):
            if "_delta_log" not in path.parts:
                column = pq.read_table(path, columns=["owner"]).column("owner").cast(self.owner_type)
                found += int(pc.sum(pc.equal(column, pa.scalar(self._owner(user_id), self.owner_type))).as_py() or 0)
        return found

    def loadable_versions(self) -> list[int]:
        versions = []
        for version in range(DeltaTable(self.uri).version() + 1):
            try:
                DeltaTable(self.uri, version=version).to_pyarrow_table(columns=["owner"])
            except Exception:  # its commit was removed, or its files vacuumed: time travel cannot reach it
                continue
            versions.append(version)
        return versions


class DeltaContract(lake.TableHistoryContract, TargetContract):
    integer = False

    @pytest.fixture
    def store(self, tmp_path: Path) -> DeltaStore:
        return DeltaStore(tmp_path / "lake" / "manifest", self.integer)

    @pytest.fixture
    def target(self, store: DeltaStore) -> DeltaTarget:
        return DeltaTarget(DeltaConfig(name="manifest", kind="delta", uri=store.uri, where={"owner": "{user_id}"}))

    @pytest.fixture
    def orphan(self, store: DeltaStore) -> Path:
        return Path(store.uri) / "part-orphan.parquet"

    def test_no_version_no_file_and_no_log_entry_keeps_the_subject(
        self, target: DeltaTarget, store: DeltaStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Before: every version after the subject's commit reads them. After: every version that can still
        be loaded reads none of their rows, no data file holds one, and the log names the value nowhere."""
        assert len(store.loadable_versions()) == 1 + len(seeded)
        assert target.purge(subject(SUBJECT), beats) == seeded[SUBJECT]
        versions = store.loadable_versions()
        assert versions == [DeltaTable(store.uri).version()]
        for version in versions:
            owners = store.owners(version)
            assert int(pc.sum(pc.equal(owners, pa.scalar(store._owner(SUBJECT), store.owner_type))).as_py() or 0) == 0
        assert store.rows_in_every_file(SUBJECT) == 0
        assert {uid: store.rows_in_every_file(uid) for uid in OTHERS} == {uid: seeded[uid] for uid in OTHERS}
        literal = predicate({"owner": store._owner(SUBJECT)}).split(" = ")[1]
        for path in (Path(store.uri) / "_delta_log").iterdir():
            if path.suffix == ".json":
                for line in path.read_text().splitlines():
                    action = json.loads(line)
                    assert literal not in json.dumps(action.get("commitInfo", {}).get("operationParameters", {}))
                    stats = json.loads((action.get("add") or {}).get("stats") or "{}")
                    assert store._owner(SUBJECT) not in (stats.get("minValues", {}).get("owner"),
                                                         stats.get("maxValues", {}).get("owner"))
        assert target.level == "bytes_reclaimed" and beats.calls >= 4

    def test_the_log_of_an_earlier_delete_is_cut_too(
        self, target: DeltaTarget, store: DeltaStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """A delete made outside lethe (its predicate names the value) is gone from the log after a purge,
        and a purge of a subject whose rows another tool deleted still reaches bytes_reclaimed."""
        DeltaTable(store.uri).delete(predicate({"owner": store._owner(SUBJECT)}))
        assert target._log_residue({"owner": store._owner(SUBJECT)}) > 0
        assert target.purge(subject(SUBJECT), beats) == 0
        assert target._log_residue({"owner": store._owner(SUBJECT)}) == 0
        assert store.rows_in_every_file(SUBJECT) == 0 and target.level == "bytes_reclaimed"

    def test_concurrent_purges_of_one_table_both_finish(
        self, target: DeltaTarget, store: DeltaStore, seeded: dict[str, int]
    ) -> None:
        """Two workers purging two subjects from one table at once: both erased, the others intact, no
        version reads either (a log cut never takes the commits a concurrent delete is checking)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(lambda uid: DeltaTarget(target.config).purge(subject(uid), Beats()),
                                 [SUBJECT, "1234"]))
        assert done == [seeded[SUBJECT], seeded["1234"]]
        assert target.verify(subject(SUBJECT)) == 0 and target.verify(subject("1234")) == 0
        assert store.remaining("123") == seeded["123"] and store.remaining("112") == seeded["112"]


class TestDeltaStringContract(lake.StringColumnContract, DeltaContract):
    integer = False

    def test_a_quote_in_a_value_matches_exactly(self, tmp_path: Path, beats: Beats) -> None:
        """A value holding a quote erases exactly the rows holding it."""
        store = DeltaStore(tmp_path / "q", integer=False)
        store._append(["o'brien"] * 4 + ["o''brien", "obrien"])
        target = DeltaTarget(DeltaConfig(name="q", kind="delta", uri=store.uri, where={"owner": "{user_id}"}))
        assert target.purge(Subject.parse({"user_id": "o'brien"}, {"user_id": None}), beats) == 4
        assert store.remaining("o''brien") == 1 and store.remaining("obrien") == 1


class TestDeltaIntegerContract(lake.IntegerColumnContract, DeltaContract):
    integer = True


def test_config_is_checked_when_the_map_loads() -> None:
    """No placeholder, a column that is not a plain name, or a remote table are refused."""
    lake.check_where_is_refused(lambda where: DeltaConfig(name="x", kind="delta", uri="/tmp/x", where=where),
                           'owner" OR 1=1 --')
    with pytest.raises(ValueError, match="local"):
        DeltaConfig(name="x", kind="delta", uri="s3://b/t", where={"owner": "{user_id}"})


def test_a_table_partitioned_by_the_subject_loses_their_partition_whole(tmp_path: Path) -> None:
    """Partitioned by owner: the subject's files are dropped whole, their directory (named after the value)
    goes, no version reads them, and the look-alikes' partitions are untouched."""
    uri = str(tmp_path / "parted")
    for owners in (["1", "12", "5", "12"], ["123", "12", "1234"]):
        write_deltalake(uri, pa.table({"owner": owners, "n": list(range(len(owners)))}), mode="append",
                        partition_by=["owner"])
    target = DeltaTarget(DeltaConfig(name="p", kind="delta", uri=uri, where={"owner": "{user_id}"}))
    assert target.count(subject(SUBJECT)) == 3
    assert target.purge(subject(SUBJECT), Beats()) == 3 and target.level == "bytes_reclaimed"
    assert target.verify(subject(SUBJECT)) == 0
    assert sorted(p.name for p in Path(uri).iterdir()) == ["_delta_log", "owner=1", "owner=123", "owner=1234",
                                                          "owner=5"]
    assert {uid: target.verify(subject(uid)) for uid in ("123", "1234")} == {"123": 1, "1234": 1}


def test_the_null_partition_is_never_a_subjects_value(tmp_path: Path) -> None:
    """delta-rs writes NULL owners to ``owner=__HIVE_DEFAULT_PARTITION__/``. The file scan (verify's loose
    files, the orphan sweep) must not read that directory as the value: a subject spelling it holds nothing,
    and an old unreferenced NULL file is nobody's, so it is neither residue nor deleted."""
    import os
    import shutil

    uri = tmp_path / "parted"
    write_deltalake(str(uri), pa.table({"owner": ["12", None, None, "123"], "n": [1, 2, 3, 4]}),
                    partition_by=["owner"])
    null_dir = uri / "owner=__HIVE_DEFAULT_PARTITION__"
    (written,) = null_dir.iterdir()
    stray = null_dir / "part-stray.parquet"  # a failed writer's leftover of NULL rows, long ago
    shutil.copy(written, stray)
    os.utime(stray, (1, 1))
    target = DeltaTarget(DeltaConfig(name="p", kind="delta", uri=str(uri), where={"owner": "{user_id}"}))
    marker = subject("__HIVE_DEFAULT_PARTITION__")
    assert target.count(marker) == 0 and target.verify(marker) == 0
    assert target.purge(marker, Beats()) == 0 and target.purge(subject(SUBJECT), Beats()) == 1
    assert target.verify(subject(SUBJECT)) == 0 and stray.exists() and written.exists()
    left = DeltaTable(str(uri)).to_pyarrow_table().to_pydict()
    assert sorted(zip(left["owner"], left["n"], strict=True), key=lambda r: r[1]) == [(None, 2), (None, 3), ("123", 4)]


def test_probe_reports_what_a_purge_would_fail_on(tmp_path: Path) -> None:
    """check-map --probe: a good table has no problem; a missing or unmatchable column, or no table, is one
    line each (the uri or value is never quoted)."""
    store = DeltaStore(tmp_path / "t", integer=False)
    probe = lambda where, uri=store.uri: DeltaTarget(  # noqa: E731
        DeltaConfig(name="m", kind="delta", uri=uri, where=where)).probe([])
    assert probe({"owner": "{user_id}"}) == []
    assert probe({"owner": "{user_id}", "nope": "{user_id}"}) == ["Delta target 'm': no column nope"]
    write_deltalake(store.uri, pa.table({"owner": ["x"], "photo": ["p"], "age": pa.array([1], pa.int32()),
                                         "score": [0.5]}), mode="append", schema_mode="merge")
    assert "only integer and string" in probe({"score": "{user_id}"})[0]
    assert probe({"owner": "{user_id}"}, str(tmp_path / "none")) == ["Delta target 'm': uri is not a Delta table"]
