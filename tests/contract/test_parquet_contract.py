"""ParquetTarget runs the target contract on a real directory of Parquet files: on disk, and on moto's S3
server over HTTP (pyarrow's S3 filesystem).

Each seeded subject gets a file of its own rows mixed with rows of nobody (look-alike owners ``120``,
``012``, ``1``, ``21``), in small row groups; a background file holds nobody's rows only. Two owner column
types: int64 on disk, string on S3.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from orchestrator.identifiers import Subject
from orchestrator.testing import make_bucket
from tests.contract.base import OTHERS, SUBJECT, Beats, TargetContract, subject
from tests.contract.lake import IntegerColumnContract, check_where_is_refused
from workers.targets.base import PermanentError
from workers.targets.parquet import ParquetConfig, ParquetTarget
from workers.targets.parquet_files import Location

pytestmark = pytest.mark.integration

NOBODY_OWNERS = ("120", "012", "1", "21", "1120")
PER_SUBJECT = {SUBJECT: 30, "123": 20, "1234": 10, "112": 5}


class ParquetStore:
    """Parquet files under a root on a pyarrow filesystem; read back with pyarrow directly."""

    def __init__(self, uri: str, endpoint: str | None, integer: bool) -> None:
        self.location = Location.of(uri, endpoint)
        self.uri, self.integer = uri, integer
        self.owner_type = pa.int64() if integer else pa.string()
        if not self.location.remote:
            Path(self.location.root).mkdir(parents=True)
        # "012" is a look-alike only as text: as an integer it would be subject 12 itself.
        self.nobody = [o for o in NOBODY_OWNERS if not (integer and o.startswith("0"))]
        self._write("background", self.nobody * 8)

    def _owner(self, text: str) -> Any:
        return int(text) if self.integer else text

    def _write(self, name: str, owners: list[str]) -> None:
        rows = len(owners)
        table = pa.table({
            "owner": pa.array([self._owner(o) for o in owners], self.owner_type),
            "photo": pa.array([f"p-{name}-{i}" for i in range(rows)]),
            "age": pa.array([20 + i % 50 for i in range(rows)], pa.int32()),
        })
        with self.location.fs.open_output_stream(self.location.under(f"part-{name}.parquet")) as sink:
            pq.write_table(table, sink, row_group_size=7)

    def seed(self, user_id: str) -> int:
        n = PER_SUBJECT[user_id]
        owners = [user_id] * n + self.nobody * 3
        self._write(f"u{user_id}", owners[::2] + owners[1::2])  # the subject's rows spread over row groups
        return n

    def owners(self) -> pa.ChunkedArray:
        tables = []
        for path in self.location.files():
            with self.location.fs.open_input_file(path) as source:
                tables.append(pq.read_table(source).select(["owner"]))
        return pa.concat_tables(tables).column("owner") if tables else pa.chunked_array([], self.owner_type)

    def remaining(self, user_id: str) -> int:
        return int(pc.sum(pc.equal(self.owners(), pa.scalar(self._owner(user_id), self.owner_type))).as_py() or 0)

    def total(self) -> int:
        return len(self.owners())

    def snapshot(self) -> dict[str, bytes]:
        """Every data file's bytes, by path."""
        out = {}
        for path in self.location.files():
            with self.location.fs.open_input_file(path) as source:
                out[path] = source.read()
        return out


class ParquetContract(TargetContract):
    integer = True

    @pytest.fixture
    def uri(self, tmp_path: Path) -> tuple[str, str | None]:
        return str(tmp_path / "lake" / "photos"), None

    @pytest.fixture
    def store(self, uri: tuple[str, str | None]) -> ParquetStore:
        return ParquetStore(uri[0], uri[1], self.integer)

    @pytest.fixture
    def target(self, store: ParquetStore, uri: tuple[str, str | None]) -> ParquetTarget:
        return ParquetTarget(ParquetConfig(name="photos-lake", kind="parquet", uri=uri[0], endpoint_url=uri[1],
                                           where={"owner": "{user_id}"}))

    def test_only_files_holding_the_subject_are_rewritten(
        self, target: ParquetTarget, store: ParquetStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """The subject's file is rewritten; every other file keeps its exact bytes (statistics rule them out
        or the read finds no row); the rewritten file keeps everyone else's rows in order."""
        before = store.snapshot()
        mine = next(p for p in before if p.endswith(f"part-u{SUBJECT}.parquet"))
        target.purge(subject(SUBJECT), beats)
        after = store.snapshot()
        assert set(after) == set(before)
        assert {p for p in before if before[p] != after[p]} == {mine}
        old = pq.read_table(pa.BufferReader(before[mine]))
        keep = pc.not_equal(old.column("owner"), pa.scalar(store._owner(SUBJECT), store.owner_type))
        assert pq.read_table(pa.BufferReader(after[mine])).equals(old.filter(keep))

    def test_a_purge_killed_half_way_is_finished_by_the_next(
        self, target: ParquetTarget, store: ParquetStore, seeded: dict[str, int]
    ) -> None:
        """A worker killed mid-rewrite leaves the file whole (no half-written file, no temp file readers
        see); the resumed purge removes the rest, and every other subject is intact."""
        store._write("u12-more", [SUBJECT] * 9 + ["120"] * 9)
        others = {uid: store.remaining(uid) for uid in OTHERS}
        total = store.total()

        class Killed(BaseException):  # like the SystemExit of a worker shut down mid-purge
            pass

        calls = 0

        def dies(done: int | None = None) -> None:
            nonlocal calls
            calls += 1
            if calls == 4:
                raise Killed

        with pytest.raises(Killed):
            target.purge(subject(SUBJECT), dies)
        assert store.total() in (total, total - seeded[SUBJECT], total - 9)  # whole files only
        resumed = ParquetTarget(target.config).purge(subject(SUBJECT), Beats())
        assert store.remaining(SUBJECT) == 0 and target.verify(subject(SUBJECT)) == 0
        assert store.total() == total - seeded[SUBJECT] - 9
        assert resumed <= seeded[SUBJECT] + 9
        assert {uid: store.remaining(uid) for uid in OTHERS} == others

    def test_injection_attempts_are_plain_values(
        self, target: ParquetTarget, store: ParquetStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """A value shaped like a predicate matches nothing (a string column) or fails (an integer column)."""
        hostile = Subject.parse({"user_id": "12' OR '1'='1"}, {"user_id": None})
        total = store.total()
        if store.integer:
            with pytest.raises(PermanentError, match="not a canonical decimal integer"):
                target.purge(hostile, beats)
        else:
            assert target.count(hostile) == 0 and target.purge(hostile, beats) == 0
        assert store.total() == total


class TestParquetLocalContract(IntegerColumnContract, ParquetContract):
    integer = True

    def test_a_missing_directory_fails_instead_of_looking_empty(self, tmp_path: Path, beats: Beats) -> None:
        """A typo in uri must not report an erasure of nothing."""
        target = ParquetTarget(ParquetConfig(name="x", kind="parquet", uri=str(tmp_path / "nope"),
                                             where={"owner": "{user_id}"}))
        with pytest.raises(PermanentError, match="does not exist"):
            target.purge(subject(SUBJECT), beats)


class TestParquetS3Contract(ParquetContract):
    integer = False

    @pytest.fixture
    def uri(self, s3_endpoint: str) -> tuple[str, str | None]:
        bucket = f"lake-{uuid.uuid4().hex[:12]}"
        make_bucket(s3_endpoint, bucket, versioned=False)
        return f"s3://{bucket}/lake/photos", s3_endpoint

    def test_level_says_a_versioned_bucket_keeps_old_bytes(self, s3_endpoint: str, beats: Beats) -> None:
        """On a versioned bucket the previous object version still holds the rows: the level says so."""
        bucket = f"lake-{uuid.uuid4().hex[:12]}"
        make_bucket(s3_endpoint, bucket, versioned=True)
        store = ParquetStore(f"s3://{bucket}/p", s3_endpoint, integer=False)
        store.seed(SUBJECT)
        target = ParquetTarget(ParquetConfig(name="x", kind="parquet", uri=f"s3://{bucket}/p",
                                             endpoint_url=s3_endpoint, where={"owner": "{user_id}"}))
        assert target.purge(subject(SUBJECT), beats) == PER_SUBJECT[SUBJECT]
        assert target.level == "invisible" and store.remaining(SUBJECT) == 0

    def test_no_temporary_object_is_left(
        self, target: ParquetTarget, store: ParquetStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """The rewrite's temp object is deleted after the copy."""
        target.purge(subject(SUBJECT), beats)
        listing = store.location.fs.get_file_info(pafs.FileSelector(store.location.root, recursive=True))
        assert not [e.path for e in listing if ".lethe-tmp" in e.path]


def test_where_is_checked_when_the_map_loads() -> None:
    """A where without a placeholder, or with a column that is not a plain name, is refused."""
    check_where_is_refused(lambda where: ParquetConfig(name="x", kind="parquet", uri="/tmp/x", where=where),
                           "owner; drop")
    with pytest.raises(ValueError, match="local path"):
        ParquetConfig(name="x", kind="parquet", uri="gs://b/x", where={"owner": "{user_id}"})


def test_a_hive_partitioned_directory_loses_the_subjects_partition(tmp_path: Path) -> None:
    """``owner=12/`` holds only the subject's rows (the column is in the path, not the file): its files and
    the directory named after the value go; ``owner=123/`` and ``owner=112/`` stay byte for byte; a
    partition by another column is rewritten by the owner column inside its files."""
    root = tmp_path / "events"
    for owner in ("12", "123", "112"):
        (root / f"owner={owner}").mkdir(parents=True)
        pq.write_table(pa.table({"n": [1, 2, 3]}), root / f"owner={owner}" / "part-0.parquet")
    (root / "day=1").mkdir()
    pq.write_table(pa.table({"owner": ["12", "120", "12"], "n": [4, 5, 6]}), root / "day=1" / "part-0.parquet")
    before = {p: p.read_bytes() for p in root.rglob("*.parquet") if "owner=12" not in str(p)}
    target = ParquetTarget(ParquetConfig(name="p", kind="parquet", uri=str(root), where={"owner": "{user_id}"}))
    assert target.count(subject(SUBJECT)) == 5
    assert target.purge(subject(SUBJECT), Beats()) == 5 and target.verify(subject(SUBJECT)) == 0
    assert not (root / "owner=12").exists()
    assert {p: p.read_bytes() for p in before if "day=1" not in str(p)} == {
        p: b for p, b in before.items() if "day=1" not in str(p)}
    assert pq.read_table(root / "day=1" / "part-0.parquet").column("owner").to_pylist() == ["120"]
    assert target.verify(subject("123")) == 3 and target.verify(subject("112")) == 3


@pytest.mark.parametrize("remote", [False, True], ids=["disk", "s3"])
def test_the_null_partition_is_never_a_subjects_value(tmp_path: Path, remote: bool, request: Any) -> None:
    """pyarrow writes NULL owners to ``owner=__HIVE_DEFAULT_PARTITION__/``. A subject whose value spells
    that name matches none of them (NULL equals no value): the NULL rows and their directory stay; another
    subject's partition still goes whole."""
    import pyarrow.dataset as ds

    if remote:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = f"lake-{uuid.uuid4().hex[:8]}"
        make_bucket(endpoint, bucket)
        uri, location = f"s3://{bucket}/events", Location.of(f"s3://{bucket}/events", endpoint)
    else:
        endpoint, uri = None, str(tmp_path / "events")
        location = Location.of(uri)
    rows = pa.table({"owner": ["12", None, None, "123"], "n": [1, 2, 3, 4]})
    ds.write_dataset(rows, location.root, filesystem=location.fs, format="parquet",
                     partitioning=ds.partitioning(pa.schema([("owner", pa.string())]), flavor="hive"))
    target = ParquetTarget(ParquetConfig(name="p", kind="parquet", uri=uri, endpoint_url=endpoint,
                                         where={"owner": "{user_id}"}))
    null_files = [p for p in location.files() if "/owner=__HIVE_DEFAULT_PARTITION__/" in p]
    assert len(null_files) == 1
    marker = subject("__HIVE_DEFAULT_PARTITION__")
    assert target.count(marker) == 0 and target.purge(marker, Beats()) == 0 and target.verify(marker) == 0
    assert target.purge(subject(SUBJECT), Beats()) == 1 and target.verify(subject(SUBJECT)) == 0
    assert [p for p in location.files() if "/owner=__HIVE_DEFAULT_PARTITION__/" in p] == null_files
    assert not [p for p in location.files() if "/owner=12/" in p]
    left = ds.dataset(location.root, filesystem=location.fs, format="parquet",
                      partitioning=ds.partitioning(pa.schema([("owner", pa.string())]), flavor="hive")).to_table()
    assert sorted(zip(left.column("owner").to_pylist(), left.column("n").to_pylist(), strict=True),
                  key=lambda r: r[1]) == [(None, 2), (None, 3), ("123", 4)]


def test_probe_reports_what_a_purge_would_fail_on(tmp_path: Path) -> None:
    """check-map --probe: every file checked; a file without the column is one line; a missing directory too."""
    store = ParquetStore(str(tmp_path / "lake"), None, integer=True)
    probe = lambda where, uri=str(tmp_path / "lake"): ParquetTarget(  # noqa: E731
        ParquetConfig(name="p", kind="parquet", uri=uri, where=where)).probe([])
    assert probe({"owner": "{user_id}"}) == []
    pq.write_table(pa.table({"user": [1]}), Path(store.location.root) / "other.parquet")
    assert probe({"owner": "{user_id}"}) == ["Parquet target 'p': no column owner"]
    assert probe({"owner": "{user_id}"}, str(tmp_path / "none")) == [
        "Parquet target 'p': the uri's path does not exist"]
