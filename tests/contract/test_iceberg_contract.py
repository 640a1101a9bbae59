"""IcebergTarget runs the target contract on real Iceberg tables (pyiceberg, SQL catalog on SQLite, a local
warehouse), with history.

Each seeded subject is one append of their rows mixed with rows of nobody (look-alike owners), so the table
has several snapshots and every snapshot after the subject's append reads them. Two owner column types:
string and long. After a purge, every snapshot that can still be read, every Parquet file under the table
and every manifest of the current snapshot are read back directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from tests.contract import lake
from tests.contract.base import OTHERS, SUBJECT, Beats, TargetContract, subject
from workers.targets.base import PermanentError
from workers.targets.iceberg import IcebergConfig, IcebergTarget
from workers.targets.selectors import normal_url

pytestmark = pytest.mark.integration

class IcebergStore(lake.HistoryStore):
    def __init__(self, root: Path, integer: bool, catalog_url: str | None = None) -> None:
        root.mkdir(parents=True)
        url = catalog_url or f"sqlite:///{root / 'catalog.db'}"
        self.catalog_props = {"name": "contract", "uri": url, "warehouse": f"file://{root / 'wh'}"}
        self.catalog = SqlCatalog("contract", uri=normal_url(url), warehouse=self.catalog_props["warehouse"])
        self.catalog.create_namespace("lake")
        owner_type = pa.int64() if integer else pa.string()
        self.schema = pa.schema([("owner", owner_type), ("photo", pa.string()), ("age", pa.int32())])
        self.catalog.create_table("lake.faces", schema=self.schema)
        super().__init__(integer)

    def table(self) -> Any:
        return self.catalog.load_table("lake.faces")

    def _append(self, owners: list[str]) -> None:
        self.table().append(pa.table(self.rows(owners), schema=self.schema))

    def _count(self, column: pa.ChunkedArray, user_id: str) -> int:
        return int(pc.sum(pc.equal(column.cast(self.owner_type), pa.scalar(self._owner(user_id), self.owner_type)))
                   .as_py() or 0)

    def owners(self, snapshot_id: int | None = None) -> pa.ChunkedArray:
        return self.table().scan(selected_fields=("owner",), snapshot_id=snapshot_id).to_arrow().column("owner")

    def remaining(self, user_id: str) -> int:
        return self._count(self.owners(), user_id)

    def total(self) -> int:
        return len(self.owners())

    def location(self) -> Path:
        return Path(self.table().location().removeprefix("file://"))

    def rows_in_every_file(self, user_id: str) -> int:
        return sum(self._count(pq.read_table(p, columns=["owner"]).column("owner"), user_id)
                   for p in (self.location() / "data").rglob("*.parquet"))


class IcebergContract(lake.TableHistoryContract, TargetContract):
    integer = False

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[IcebergStore]:
        store = IcebergStore(tmp_path / "lake", self.integer)
        yield store
        store.catalog.engine.dispose()

    @pytest.fixture
    def target(self, store: IcebergStore) -> IcebergTarget:
        return IcebergTarget(IcebergConfig(name="faces", kind="iceberg", catalog=store.catalog_props,
                                           table="lake.faces", where={"owner": "{user_id}"}))

    @pytest.fixture
    def orphan(self, store: IcebergStore) -> Path:
        return store.location() / "data" / "orphan.parquet"

    def test_no_snapshot_no_file_and_no_manifest_keeps_the_subject(
        self, target: IcebergTarget, store: IcebergStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Before: several snapshots read the subject. After: one snapshot, no readable snapshot and no data
        file holds their rows, no manifest bound is their value, and no metadata file of before is left."""
        snapshots = store.table().snapshots()
        assert len(snapshots) == 1 + len(seeded)
        files_before = {p for p in store.location().rglob("*") if p.is_file()}
        assert target.purge(subject(SUBJECT), beats) == seeded[SUBJECT]
        table = store.table()
        assert [s.snapshot_id for s in table.snapshots()] == [table.current_snapshot().snapshot_id]
        for snapshot in snapshots:  # time travel to each snapshot of before: gone, or without the subject
            try:
                owners = store.owners(snapshot.snapshot_id)
            except Exception:
                continue
            assert store._count(owners, SUBJECT) == 0
        assert store.rows_in_every_file(SUBJECT) == 0
        assert {uid: store.rows_in_every_file(uid) for uid in OTHERS} == {uid: seeded[uid] for uid in OTHERS}
        assert target._bounds_residue(table, {"owner": store._owner(SUBJECT)}) == 0
        left = {str(p) for p in store.location().rglob("*") if p.is_file()}
        live = target._reachable(table, [table.current_snapshot()]) | {table.metadata_location.removeprefix("file://")}
        assert left == live  # every old manifest list, manifest, data and metadata file is gone
        assert files_before - {Path(p) for p in left}
        assert target.level == "bytes_reclaimed" and beats.calls >= 4

    def test_a_tagged_snapshot_is_refused_before_anything_is_deleted(
        self, target: IcebergTarget, store: IcebergStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """A tag keeps an older snapshot (and the subject's rows): the purge refuses and deletes nothing."""
        table = store.table()
        table.manage_snapshots().create_tag(table.snapshots()[1].snapshot_id, "audit-2024").commit()
        with pytest.raises(PermanentError, match="tag or branch"):
            target.purge(subject(SUBJECT), beats)
        assert store.remaining(SUBJECT) == seeded[SUBJECT]


class TestIcebergStringContract(lake.StringColumnContract, IcebergContract):
    integer = False


class TestIcebergIntegerContract(lake.IntegerColumnContract, IcebergContract):
    integer = True


def test_config_is_checked_when_the_map_loads() -> None:
    lake.check_where_is_refused(lambda where: IcebergConfig(name="x", kind="iceberg", catalog={"uri": "sqlite://"},
                                                       table="a.b", where=where), "o-wner")
    with pytest.raises(ValueError, match=r"namespace\.name"):
        IcebergConfig(name="x", kind="iceberg", catalog={"uri": "sqlite://"}, table="a", where={"o": "{user_id}"})
    with pytest.raises(ValueError, match="uri"):
        IcebergConfig(name="x", kind="iceberg", catalog={}, table="a.b", where={"o": "{user_id}"})


def test_a_catalog_on_postgresql_works_as_given(tmp_path: Path, pg_database: str) -> None:
    """The catalog on the machine's PostgreSQL, its URL given as postgresql:// (as the ledger's): the purge
    erases the subject from every snapshot and file, leaves the others, and closes its connections (the
    database drops without force)."""
    store = IcebergStore(tmp_path / "lake", integer=True, catalog_url=pg_database)
    try:
        seeded = {uid: store.seed(uid) for uid in (SUBJECT, *OTHERS)}
        target = IcebergTarget(IcebergConfig(name="faces", kind="iceberg", catalog=store.catalog_props,
                                             table="lake.faces", where={"owner": "{user_id}"}))
        assert target.purge(subject(SUBJECT), Beats()) == seeded[SUBJECT]
        assert target.verify(subject(SUBJECT)) == 0 and store.rows_in_every_file(SUBJECT) == 0
        assert {uid: store.remaining(uid) for uid in OTHERS} == {uid: seeded[uid] for uid in OTHERS}
        assert len(store.table().snapshots()) == 1 and target.level == "bytes_reclaimed"
    finally:
        store.catalog.engine.dispose()


def test_a_table_partitioned_by_the_subject_loses_their_partition_whole(tmp_path: Path) -> None:
    """Identity-partitioned by owner: the subject's files go whole, their directory (named after the value)
    with them, no snapshot or file reads them, and the look-alikes' partitions stay."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.types import LongType, NestedField, StringType

    root = tmp_path / "parted"
    root.mkdir()
    props = {"name": "p", "uri": f"sqlite:///{root / 'c.db'}", "warehouse": f"file://{root / 'wh'}"}
    catalog = SqlCatalog("p", uri=props["uri"], warehouse=props["warehouse"])
    try:
        catalog.create_namespace("lake")
        schema = Schema(NestedField(1, "owner", StringType(), required=False),
                        NestedField(2, "n", LongType(), required=False))
        spec = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="owner"))
        table = catalog.create_table("lake.faces", schema=schema, partition_spec=spec)
        for owners in (["1", "12", "5", "12"], ["123", "12", "1234"]):
            table.append(pa.table({"owner": owners, "n": list(range(len(owners)))}, schema=schema.as_arrow()))
        target = IcebergTarget(IcebergConfig(name="p", kind="iceberg", catalog=props, table="lake.faces",
                                             where={"owner": "{user_id}"}))
        assert target.purge(subject(SUBJECT), Beats()) == 3 and target.level == "bytes_reclaimed"
        assert target.verify(subject(SUBJECT)) == 0
        data = Path(catalog.load_table("lake.faces").location().removeprefix("file://")) / "data"
        assert sorted(p.name for p in data.iterdir()) == ["owner=1", "owner=123", "owner=1234", "owner=5"]
        assert {uid: target.verify(subject(uid)) for uid in ("123", "1234")} == {"123": 1, "1234": 1}
    finally:
        catalog.engine.dispose()


def test_probe_reports_what_a_purge_would_fail_on(tmp_path: Path) -> None:
    """check-map --probe: a good table has no problem; a missing column, a missing table, and a tag on an
    older snapshot (the purge would refuse) are one line each."""
    store = IcebergStore(tmp_path / "lake", integer=True)
    try:
        store.seed(SUBJECT)

        def probe(where: dict[str, str], table: str = "lake.faces") -> list[str]:
            return IcebergTarget(IcebergConfig(name="f", kind="iceberg", catalog=store.catalog_props, table=table,
                                               where=where)).probe([])

        assert probe({"owner": "{user_id}"}) == []
        assert probe({"nope": "{user_id}"}) == ["Iceberg target 'f': no column nope"]
        assert probe({"owner": "{user_id}"}, "lake.none") == ["Iceberg target 'f': the catalog has no table lake.none"]
        table = store.table()
        table.manage_snapshots().create_tag(table.snapshots()[0].snapshot_id, "audit").commit()
        assert "tag or branch" in probe({"owner": "{user_id}"})[0]
    finally:
        store.catalog.engine.dispose()
