"""LanceDBTarget beyond the contract: physical erasure proven on disk, tags, injection, types, errors.

Real LanceDB tables in tmp_path. The identifier ``zz-subject-4711`` is distinctive so a raw byte scan of
the table's directory can only find it where the subject's data (or a predicate naming it) survived.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, text

from orchestrator.identifiers import InvalidIdentifier, Subject
from tests.contract.base import Beats
from workers.targets import lancedb as lancedb_module
from workers.targets.base import PermanentError, RetryableError, build_target
from workers.targets.lancedb import LanceDBConfig, LanceDBTarget, connection
from workers.targets.lancedb_predicates import equality_predicate, in_predicate, quote_column, sql_literal
from workers.targets.selectors import KeysQuery, dispose_engine

pytestmark = pytest.mark.integration

USER = "zz-subject-4711"
DIM = 16
HOSTILE = [
    "12' OR '1'='1",
    "12 OR 1=1",
    "x\\",
    "x\\' OR '1'='1",
    "%",
    "_",
    "' OR ''='",
    "12'--",
    "12'); DELETE FROM faces; --",
    "`owner`",
    "owner",
    "O'Brien",
    "''",
]


def subject(user_id: str = USER) -> Subject:
    return Subject.parse({"user_id": user_id}, {"user_id": None})


class Estate:
    """A LanceDB database with a ``faces`` table written by the test, read back without the target."""

    def __init__(self, root: Path, owner_type: pa.DataType = pa.string()) -> None:
        import lancedb

        self.location = str(root)
        self.rng = np.random.default_rng(7)
        self.serial = 0
        self.schema = pa.schema([("id", pa.string()), ("owner", owner_type), ("vector", pa.list_(pa.float32(), DIM))])
        self.db = lancedb.connect(self.location)
        self.table = self.db.create_table("faces", schema=self.schema)

    def batch(self, owners: list[Any]) -> pa.Table:
        ids = [f"item-{self.serial + i}" for i in range(len(owners))]
        self.serial += len(owners)
        vectors = self.rng.random((len(owners), DIM), dtype=np.float32)
        return pa.table({"id": ids, "owner": pa.array(owners, self.schema.field("owner").type),
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)},
                        schema=self.schema)

    def add(self, owners: list[Any]) -> None:
        self.table.add(self.batch(owners))

    def rows(self, version: int | None = None) -> pa.Table:
        table = self.db.open_table("faces")
        if version is not None:
            table.checkout(version)
        return table.to_arrow()

    def count(self, owner: Any, version: int | None = None) -> int:
        rows = self.rows(version)
        mask = pc.equal(rows.column("owner"), pa.scalar(owner, self.schema.field("owner").type))
        return int(pc.sum(mask).as_py() or 0)

    def versions(self) -> list[int]:
        return [v["version"] for v in self.db.open_table("faces").list_versions()]

    @property
    def table_dir(self) -> Path:
        return Path(self.location) / "faces.lance"

    def files_holding(self, needle: bytes) -> list[str]:
        """Every file under the database directory whose raw bytes contain ``needle``."""
        found = []
        for directory, _dirs, files in os.walk(self.location):
            for name in files:
                path = Path(directory) / name
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(self.location)))
        return found


def mixed(owner: Any, n: int, others: list[Any], every: int = 7) -> list[Any]:
    """``n`` rows of ``owner`` spread among rows of ``others``."""
    rows: list[Any] = []
    for i in range(n * every):
        rows.append(owner if i % every == 0 else others[i % len(others)])
    return rows


def target_for(estate: Estate, **config: Any) -> LanceDBTarget:
    fields: dict[str, Any] = {"name": "faces", "kind": "lancedb", "location": estate.location, "table": "faces",
                              "match": {"owner": "{user_id}"}}
    fields.update(config)
    return LanceDBTarget(LanceDBConfig(**fields))


@pytest.fixture
def estate(tmp_path: Path) -> Estate:
    """A 10k-row table where USER's rows sit in several versions, mixed with other owners' rows."""
    estate = Estate(tmp_path / "vectors")
    others = [f"user-{k}" for k in range(40)]
    estate.add([others[i % len(others)] for i in range(6000)])
    estate.add(mixed(USER, 300, others))  # 2100 rows
    estate.add(mixed(USER, 200, others))  # 1400 rows
    estate.add([others[i % len(others)] for i in range(600)])
    return estate


# -- physical erasure ---------------------------------------------------------------------------------
def test_purge_leaves_no_version_and_no_byte_of_the_subject(estate: Estate) -> None:
    """After the purge one version remains, none holds USER's rows, and no file holds the identifier."""
    assert estate.files_holding(USER.encode())  # the scan below can find it
    assert len(estate.versions()) >= 4
    target = target_for(estate)
    beats = Beats()
    assert target.purge(subject(), beats) == 500
    assert target.level == "bytes_reclaimed"
    assert beats.calls >= 6
    assert estate.versions() == [estate.db.open_table("faces").version]
    assert all(estate.count(USER, v) == 0 for v in estate.versions())
    assert estate.files_holding(USER.encode()) == []
    assert target.verify(subject()) == 0


def test_only_the_fragments_that_held_the_subject_are_rewritten(tmp_path: Path) -> None:
    """Fragments without USER's rows keep their data files byte for byte (no merge with their small
    neighbours); USER is in no remaining version and no file; every other row is intact."""
    import lance

    estate = Estate(tmp_path / "vectors")
    others = [f"user-{k}" for k in range(30)]
    estate.add([others[i % 30] for i in range(3000)])
    estate.add(mixed(USER, 100, others))
    estate.add([others[i % 30] for i in range(2000)])
    estate.add(mixed(USER, 50, others))
    estate.add([others[i % 30] for i in range(600)])

    def data_files() -> dict[int, dict[str, bytes]]:
        dataset = lance.dataset(str(estate.table_dir))
        return {f.fragment_id: {d.path: (estate.table_dir / "data" / d.path).read_bytes() for d in f.metadata.files}
                for f in dataset.get_fragments()}

    before_files, before_rows = data_files(), estate.rows()
    assert len(before_files) == 5
    untouched = {0: before_files[0], 2: before_files[2], 4: before_files[4]}
    target = target_for(estate)
    assert target.purge(subject(), Beats()) == 150
    assert (target.fragments_rewritten, target.fragments_total) == (2, 5)
    after_files = data_files()
    assert {i: after_files.get(i) for i in untouched} == untouched  # same fragments, same files, same bytes
    assert len(after_files) == 5 and not set(after_files) & {1, 3}  # the two that held USER were rewritten
    assert estate.versions() == [estate.db.open_table("faces").version]
    assert all(estate.count(USER, v) == 0 for v in estate.versions())
    assert estate.files_holding(USER.encode()) == []
    kept = before_rows.filter(pc.not_equal(before_rows.column("owner"), USER))
    assert estate.rows().sort_by("id").equals(kept.sort_by("id"))
    assert target.level == "bytes_reclaimed" and target.verify(subject()) == 0


def test_a_fragment_with_soft_deleted_rows_is_rewritten_too(tmp_path: Path) -> None:
    """An earlier delete's rows are still in their data file: that fragment is rewritten, since they might
    be USER's (here they are: the application deleted half of them), and none of USER's bytes stay."""
    estate = Estate(tmp_path / "vectors")
    estate.add(mixed(USER, 40, ["user-1", "user-2"]))
    estate.add(["user-3"] * 500)
    estate.db.open_table("faces").delete(f"owner = '{USER}' AND id < 'item-100'")  # the application's delete
    target = target_for(estate)
    assert 0 < target.purge(subject(), Beats()) < 40
    assert (target.fragments_rewritten, target.fragments_total) == (1, 2)
    assert estate.files_holding(USER.encode()) == [] and target.level == "bytes_reclaimed"
    assert estate.count("user-3") == 500


def test_a_fragment_keeping_a_dropped_column_naming_the_subject_is_rewritten(tmp_path: Path) -> None:
    """Dropping a column leaves its bytes in the data files, where the selector scan cannot read them: a
    fragment storing a dropped column is rewritten too, so USER's identifier there leaves the disk."""
    import lance

    estate = Estate(tmp_path / "vectors")
    estate.db.drop_table("faces")
    table = estate.db.create_table("faces", schema=estate.schema.append(pa.field("referrer", pa.string())))
    for owners, referrer in ((mixed(USER, 20, ["user-1"]), "none"), (["user-2"] * 300, USER)):
        batch = estate.batch(owners)
        table.add(batch.append_column("referrer", pa.array([referrer] * len(owners))))
    lance.dataset(str(estate.table_dir)).drop_columns(["referrer"])
    estate.add(["user-3"] * 200)  # written after the drop: no dropped column in its file
    target = target_for(estate)
    assert target.purge(subject(), Beats()) == 20
    assert (target.fragments_rewritten, target.fragments_total) == (2, 3)
    assert estate.files_holding(USER.encode()) == [] and target.level == "bytes_reclaimed"
    assert estate.count("user-2") == 300 and estate.count("user-3") == 200


def test_other_rows_and_their_neighbours_are_unchanged(estate: Estate) -> None:
    """Other owners' rows stay byte-identical and exact nearest-neighbour results only lose USER's rows."""
    before = estate.rows()
    kept = before.filter(pc.not_equal(before.column("owner"), USER))
    probes = kept.column("vector").to_pylist()[:20]
    user_ids = set(before.filter(pc.equal(before.column("owner"), USER)).column("id").to_pylist())

    def neighbours(vector: list[float]) -> list[str]:
        found = estate.db.open_table("faces").search(vector).limit(15).select(["id", "_distance"]).to_arrow()
        return found.column("id").to_pylist()

    results_before = [neighbours(v) for v in probes]
    target_for(estate).purge(subject(), Beats())
    after = estate.rows()
    assert after.sort_by("id").equals(kept.sort_by("id"))
    for vector, earlier in zip(probes, results_before, strict=True):
        expected = [i for i in earlier if i not in user_ids]
        assert neighbours(vector)[: len(expected)] == expected


def test_subject_filling_whole_fragments_leaves_no_predicate_behind(tmp_path: Path) -> None:
    """When the delete drops whole fragments (nothing to compact), its predicate still leaves the disk."""
    estate = Estate(tmp_path / "vectors")
    estate.add([f"user-{i % 9}" for i in range(3000)])
    estate.add([USER] * 40)  # a fragment of its own: deleting it rewrites nothing
    target = target_for(estate)
    assert target.purge(subject(), Beats()) == 40
    assert estate.files_holding(USER.encode()) == []
    assert target.level == "bytes_reclaimed"


def test_the_byte_scan_catches_a_predicate_left_in_the_latest_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the no-op version on top, the delete's manifest keeps the identifier and the task fails."""
    estate = Estate(tmp_path / "vectors")
    estate.add([f"user-{i % 9}" for i in range(3000)])
    estate.add([USER] * 40)
    monkeypatch.setattr(LanceDBTarget, "_commit_filler", lambda self, table: None)
    with pytest.raises(PermanentError, match="erasure incomplete") as failed:
        target_for(estate).purge(subject(), Beats())
    assert USER not in str(failed.value) and estate.location not in str(failed.value)
    assert any(path.startswith("faces.lance/_versions/") for path in estate.files_holding(USER.encode()))


def test_a_stray_file_holding_the_identifier_fails_the_task(estate: Estate) -> None:
    """Any file under the table that still holds the identifier makes the erasure incomplete."""
    (estate.table_dir / "export-notes.txt").write_bytes(b"rows of " + USER.encode() + b" copied here\n")
    with pytest.raises(PermanentError, match=r"erasure incomplete.*\(other\)") as failed:
        target_for(estate).purge(subject(), Beats())
    assert USER not in str(failed.value)


def test_skipped_compaction_is_caught_by_the_scan_or_lowers_the_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted rows left in a live data file fail a distinctive identifier and mark a short one invisible."""
    monkeypatch.setattr(LanceDBTarget, "_compact", lambda self, table, rewrite: None)
    estate = Estate(tmp_path / "vectors")
    estate.add(mixed(USER, 50, ["user-1", "user-2"]) + mixed("ab", 50, ["user-3"]))
    with pytest.raises(PermanentError, match=r"erasure incomplete.*data file"):
        target_for(estate).purge(subject(), Beats())
    short = target_for(estate)
    assert short.purge(subject("ab"), Beats()) == 50
    assert short.level == "invisible"


def test_an_identifier_inside_another_owners_value_is_not_residue(tmp_path: Path) -> None:
    """Raw bytes of USER inside a longer live value (zz-subject-47110) are explained, not residue."""
    estate = Estate(tmp_path / "vectors")
    estate.add(mixed(USER, 30, [USER + "0", "user-1"]))
    target = target_for(estate)
    assert target.purge(subject(), Beats()) == 30
    assert target.level == "bytes_reclaimed"
    assert estate.count(USER + "0") == 30 * 6 // 2
    assert target.verify(subject(USER + "0")) == estate.count(USER + "0")


def test_verify_reads_every_remaining_version(estate: Estate) -> None:
    """A delete without cleanup leaves the rows in older versions, and verify() counts them."""
    estate.db.open_table("faces").delete(f"owner = '{USER}'")
    assert estate.count(USER) == 0
    assert target_for(estate).verify(subject()) > 0


def test_verify_searches_with_the_subjects_vectors(estate: Estate) -> None:
    """verify() counts the subject's rows that its own vectors find through a vector index."""
    from lancedb.index import IvfFlat

    target = target_for(estate)
    rows = estate.rows()
    target.probes = {"vector": rows.filter(pc.equal(rows.column("owner"), USER)).column("vector").to_pylist()[:5]}
    target._probes_for = (("user_id", USER),)
    plain = target_for(estate)  # no probes: rows by filter, in every version
    assert target.verify(subject()) == plain.verify(subject())  # no index: a search reads what the count did
    estate.db.open_table("faces").create_index("vector", config=IvfFlat(num_partitions=4))  # exact, all probed
    assert target.verify(subject()) >= plain.verify(subject()) + 5
    assert target.verify(subject("user-1")) == plain.verify(subject("user-1"))  # the probes are USER's only


def test_a_purge_of_an_indexed_table_leaves_nothing_the_index_finds(estate: Estate) -> None:
    """With a vector index, the compaction remaps it: USER's own vectors find none of USER's rows."""
    from lancedb.index import IvfFlat

    estate.db.open_table("faces").create_index("vector", config=IvfFlat(num_partitions=4))
    target = target_for(estate)
    assert target.purge(subject(), Beats()) == 500
    assert len(target.probes["vector"]) == 500
    assert target.verify(subject()) == 0 and target.level == "bytes_reclaimed"
    assert estate.files_holding(USER.encode()) == []


# -- tags and branches ---------------------------------------------------------------------------------
def test_a_tagged_version_holding_the_subject_blocks_the_purge(estate: Estate) -> None:
    """A tag pinning a version with USER's rows fails the task, keeps the tag and deletes nothing."""
    table = estate.db.open_table("faces")
    table.tags.create("release-1", table.version)
    before = estate.count(USER)
    with pytest.raises(PermanentError, match="tagged version blocks erasure") as failed:
        target_for(estate).purge(subject(), Beats())
    assert "release-1" in str(failed.value) and USER not in str(failed.value)
    assert "release-1" in estate.db.open_table("faces").tags.list()
    assert estate.count(USER) == before
    estate.db.open_table("faces").tags.delete("release-1")  # the operator's decision, then a retry
    assert target_for(estate).purge(subject(), Beats()) == before
    assert estate.files_holding(USER.encode()) == []


def test_a_tag_on_a_version_without_the_subject_is_kept(tmp_path: Path) -> None:
    """A tag pinning a version from before USER's rows existed does not block, and survives the purge."""
    estate = Estate(tmp_path / "vectors")
    estate.add([f"user-{i % 5}" for i in range(2000)])
    table = estate.db.open_table("faces")
    table.tags.create("baseline", table.version)
    estate.add(mixed(USER, 40, ["user-1", "user-2"]))
    target = target_for(estate)
    assert target.purge(subject(), Beats()) == 40
    assert "baseline" in estate.db.open_table("faces").tags.list()
    assert target.verify(subject()) == 0
    assert estate.files_holding(USER.encode()) == []


def test_a_branch_holding_the_subject_blocks_the_purge(estate: Estate) -> None:
    """A branch forked while USER's rows existed fails the task: cleanup never touches branches."""
    estate.db.open_table("faces").branches.create("experiment")
    with pytest.raises(PermanentError, match="branch 'experiment'"):
        target_for(estate).purge(subject(), Beats())


# -- predicate safety --------------------------------------------------------------------------------------
@pytest.fixture
def hostile_estate(tmp_path: Path) -> Estate:
    """Owners that are hostile strings, beside the rows they would reach if a predicate were widened."""
    estate = Estate(tmp_path / "vectors")
    owners = [*HOSTILE, "12", "123", "1", "x", "x'", "O", "Brien", "", " "]
    estate.add([owner for owner in owners for _ in range(3)])
    return estate


@pytest.mark.parametrize("value", [*HOSTILE, "absent' OR 'a'='a", "absent"])
def test_a_hostile_value_matches_only_itself(hostile_estate: Estate, value: str) -> None:
    """The predicate built from a hostile string selects exactly the rows equal to it, never more."""
    table = hostile_estate.db.open_table("faces")
    predicate = equality_predicate({"owner": value}, table.schema)
    assert table.count_rows(predicate) == hostile_estate.count(value)


@pytest.mark.parametrize("value", ["12' OR '1'='1", "12 OR 1=1", "' OR ''='", "12'--", "O'Brien"])
def test_a_hostile_subject_purges_only_its_own_rows(hostile_estate: Estate, value: str) -> None:
    """A hostile identifier that passes subject validation erases exactly its own three rows."""
    total = len(hostile_estate.rows())
    assert target_for(hostile_estate).purge(subject(value), Beats()) == 3
    assert hostile_estate.count(value) == 0
    assert len(hostile_estate.rows()) == total - 3


@pytest.mark.parametrize("value", ["x\\", "%", "x\\' OR '1'='1", "*", "12/", ".."])
def test_subject_validation_refuses_wildcards_and_backslashes(value: str) -> None:
    """Values with backslashes or wildcards never reach the target: the intake refuses them."""
    with pytest.raises(InvalidIdentifier):
        subject(value)


def test_hostile_column_names_are_refused() -> None:
    """Column names are plain identifiers, quoted; anything else is refused before a predicate exists."""
    assert quote_column("owner_id") == "`owner_id`"
    for column in ["owner` = 'x' OR `1", "owner id", "a.b", "", "1owner", "owner;"]:
        with pytest.raises(PermanentError):
            quote_column(column)


def test_hostile_ids_match_only_themselves(hostile_estate: Estate) -> None:
    """An IN predicate built from hostile ids selects exactly the rows with those values."""
    table = hostile_estate.db.open_table("faces")
    predicate = in_predicate("owner", ["12' OR '1'='1", "x\\"], table.schema)
    assert table.count_rows(predicate) == 6


@pytest.mark.parametrize(
    "value", ["12 OR 1=1", "012", "+12", "1e3", "12.0", " 12", "0x0c", "", "-0", "١٢", "99999999999999999999"]
)
def test_an_integer_column_takes_only_canonical_integers(value: str) -> None:
    """A value that is not a canonical decimal integer in range fails: never a silent zero."""
    with pytest.raises(PermanentError) as failed:
        sql_literal(value, pa.int64(), "owner_id")
    assert value.strip() == "" or value not in str(failed.value)


def test_integer_literals_respect_the_column_type() -> None:
    """Integers are written canonically and range-checked against the Arrow type."""
    assert sql_literal("12", pa.int64(), "c") == "12"
    assert sql_literal("-7", pa.int32(), "c") == "-7"
    assert sql_literal(str(2**64 - 1), pa.uint64(), "c") == str(2**64 - 1)
    with pytest.raises(PermanentError):
        sql_literal("-1", pa.uint32(), "c")
    with pytest.raises(PermanentError):
        sql_literal("128", pa.int8(), "c")
    with pytest.raises(PermanentError):
        sql_literal(True, pa.int64(), "c")
    with pytest.raises(PermanentError, match="only integer and string"):
        sql_literal("1.5", pa.float64(), "c")
    assert sql_literal("it's", pa.large_string(), "c") == "'it''s'"
    with pytest.raises(PermanentError):
        sql_literal("a\x00b", pa.string(), "c")


def test_the_int64_extremes_are_matched(tmp_path: Path) -> None:
    """The smallest and largest int64 owners are matched exactly."""
    estate = Estate(tmp_path / "vectors", pa.int64())
    estate.add([-(2**63), 2**63 - 1, 0, 12])
    table = estate.db.open_table("faces")
    for value in [str(-(2**63)), str(2**63 - 1), "0"]:
        assert table.count_rows(equality_predicate({"owner": value}, table.schema)) == 1


def test_an_unconvertible_value_for_an_integer_column_fails_and_deletes_nothing(tmp_path: Path) -> None:
    """Subject '12 OR 1=1' on an int64 owner column fails the task; rows of 12 and 0 stay."""
    estate = Estate(tmp_path / "vectors", pa.int64())
    estate.add([12, 0, 120, 1] * 50)
    target = target_for(estate)
    for value in ["12 OR 1=1", "12.0", "twelve"]:
        with pytest.raises(PermanentError, match="integer column owner") as failed:
            target.purge(subject(value), Beats())
        assert value not in str(failed.value)
    assert len(estate.rows()) == 200 and estate.count(12) == 50
    assert target.purge(subject("12"), Beats()) == 50
    assert estate.count(0) == 50 and estate.count(120) == 50


# -- configuration ---------------------------------------------------------------------------------------
def config(**fields: Any) -> LanceDBConfig:
    base: dict[str, Any] = {"name": "faces", "kind": "lancedb", "location": "./vectors", "table": "faces",
                            "match": {"owner": "{user_id}"}}
    base.update(fields)
    return LanceDBConfig(**{k: v for k, v in base.items() if v is not None})


def test_collection_is_a_synonym_of_table() -> None:
    """`collection` fills `table`; giving both is refused."""
    assert config(table=None, collection="faces").table == "faces"
    with pytest.raises(ValidationError, match="not both"):
        config(collection="faces")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"match": {"owner": "12"}}, "placeholder"),
        ({"match": {}}, "at least one column"),
        ({"match": {"owner` OR `1": "{user_id}"}}, "plain column"),
        ({"match": {"owner": "{user_id!r}"}}, "placeholder"),
        ({"match": None}, "exactly one of match or ids_query"),
        ({"ids_query": {"url": "sqlite://", "sql": "SELECT id FROM t WHERE o = :user_id"}}, "exactly one"),
        ({"location": "s3://bucket/vectors"}, "local directory"),
        ({"location": "db://my-cloud-db"}, "local directory"),
        ({"table": "../other"}, "plain LanceDB table name"),
        ({"table": "a/b"}, "plain LanceDB table name"),
        ({"id_column": "id; drop"}, "plain column"),
        ({"uri": "./vectors"}, "Extra inputs"),
    ],
)
def test_bad_configuration_is_refused(fields: dict[str, Any], message: str) -> None:
    """Configurations that could widen a selector or cannot be proven are refused when the map loads."""
    with pytest.raises(ValidationError, match=message):
        config(**fields)


def test_configuration_names_the_identifiers_it_needs() -> None:
    """Placeholders in match and :parameters of ids_query are the identifiers a request must carry."""
    assert config(match={"owner": "{user_id}", "tenant": "{tenant}"}).required_identifiers() == {"user_id", "tenant"}
    query = KeysQuery(url="sqlite://", sql="SELECT item_id FROM items WHERE owner = :email")
    assert config(match=None, ids_query=query).required_identifiers() == {"email"}
    assert config(location="file:///srv/vectors").location == "file:///srv/vectors"


def test_the_registry_builds_the_target() -> None:
    """Kind lancedb resolves to LanceDBTarget through the lazy registry."""
    assert isinstance(build_target(config()), LanceDBTarget)


# -- errors and connections ---------------------------------------------------------------------------------
def test_a_missing_database_fails_permanently_and_is_not_created(tmp_path: Path) -> None:
    """A location that does not exist is a permanent error; nothing is created there."""
    missing = tmp_path / "no-such-db"
    target = LanceDBTarget(config(location=str(missing)))
    with pytest.raises(PermanentError) as failed:
        target.count(subject())
    assert not missing.exists() and str(tmp_path) not in str(failed.value)


def test_a_missing_table_or_column_fails_permanently(estate: Estate) -> None:
    """An unknown table or match column is a permanent error naming neither value nor path."""
    with pytest.raises(PermanentError, match="not found") as failed:
        target_for(estate, table="nope").purge(subject(), Beats())
    assert estate.location not in str(failed.value)
    with pytest.raises(PermanentError, match="no column subject_id"):
        target_for(estate, match={"subject_id": "{user_id}"}).count(subject())


def test_a_vector_column_cannot_be_matched(estate: Estate) -> None:
    """Matching on a column that is neither integer nor string is refused."""
    with pytest.raises(PermanentError, match="only integer and string"):
        target_for(estate, match={"vector": "{user_id}"}).count(subject())


@pytest.mark.parametrize(
    ("error", "expected", "text"),
    [
        (OSError(f"IO error reading /data/{USER}/x.lance"), RetryableError, "OSError"),
        (OSError("Commit conflict for version 7"), RetryableError, "commit conflict"),
        (TimeoutError("timed out"), RetryableError, "TimeoutError"),
        (FileNotFoundError(f"/data/{USER}"), PermanentError, "not found"),
        (ValueError(f"Invalid input: `owner` = '{USER}'"), PermanentError, "invalid input"),
        (ValueError("Table 'faces' was not found"), PermanentError, "not found"),
        (RuntimeError(f"panic at {USER}"), PermanentError, "RuntimeError"),
        (RuntimeError(f"lance error: Not found: /data/{USER}.lance"), PermanentError, "not found"),
        (RuntimeError(f"lance error: IO error: /data/{USER}.lance"), RetryableError, "IO"),
        (PermissionError(f"/data/{USER}"), PermanentError, "permission denied"),
    ],
)
def test_vendor_errors_are_translated_without_identifiers(
    estate: Estate, error: Exception, expected: type[Exception], text: str
) -> None:
    """IO errors and conflicts retry, the rest fail; no message carries an identifier or a path."""
    target = target_for(estate)
    with pytest.raises(expected) as failed, target._translate("compact"):
        raise error
    assert text in str(failed.value) and USER not in str(failed.value) and "/data" not in str(failed.value)


def test_one_connection_per_location(tmp_path: Path) -> None:
    """Connections are cached per database directory, whatever the spelling of its path."""
    root = tmp_path / "vectors"
    root.mkdir()
    assert connection(str(root)) is connection(f"{root}/../vectors")
    assert connection(str(root)) is connection(root.as_uri())
    assert str(root.resolve()) in lancedb_module._connections


# -- ids_query ----------------------------------------------------------------------------------------------
@pytest.fixture
def app_db(pg_database: str) -> Iterator[str]:
    """The application's PostgreSQL database with ``items(owner_id, item_id, item_no)``."""
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (owner_id TEXT NOT NULL, item_id TEXT NOT NULL, item_no BIGINT)"))
        rows = [{"o": USER, "i": f"item-{n}", "n": n} for n in range(0, 400, 4)]
        rows += [{"o": "zz-other", "i": f"item-{n}", "n": n} for n in range(1, 400, 4)]
        rows += [{"o": USER, "i": "item-1' OR '1'='1", "n": None}]  # hostile, and in no LanceDB row
        rows += [{"o": USER, "i": "item-0", "n": 0}]  # a duplicate row: one item
        conn.execute(text("INSERT INTO items VALUES (:o, :i, :n)"), rows)
    yield pg_database
    engine.dispose()
    dispose_engine(pg_database)  # the adapter's pool, before the database is dropped


def test_ids_query_erases_exactly_the_listed_items(tmp_path: Path, app_db: str) -> None:
    """Items listed for USER in the app database go; zz-other's items and unlisted rows stay."""
    estate = Estate(tmp_path / "vectors")
    estate.add(["row"] * 5000)  # ids item-0 .. item-4999, owner column unused
    query = KeysQuery(url=app_db, sql="SELECT item_id FROM items WHERE owner_id = :user_id")
    target = target_for(estate, match=None, ids_query=query, id_column="id")
    assert target.count(subject()) == 100
    beats = Beats()
    assert target.purge(subject(), beats) == 100
    assert target.verify(subject()) == 0 and target.level == "bytes_reclaimed"
    ids = set(estate.rows().column("id").to_pylist())
    assert len(ids) == 4900
    assert not any(f"item-{n}" in ids for n in range(0, 400, 4))
    assert all(f"item-{n}" in ids for n in range(1, 400, 4))
    assert all(f"item-{n}" in ids for n in range(400, 5000))
    assert target.purge(subject(), beats) == 0


def test_ids_query_converts_ids_to_an_integer_column(tmp_path: Path, app_db: str) -> None:
    """Integer ids from the app database match an int64 id column; nothing is matched as zero by mistake."""
    estate = Estate(tmp_path / "vectors", pa.int64())
    estate.add(list(range(1000)))  # the owner column is the item number here
    query = KeysQuery(url=app_db, sql="SELECT item_no FROM items WHERE owner_id = :user_id AND item_no > 0")
    target = target_for(estate, match=None, ids_query=query, id_column="owner")
    assert target.purge(subject(), Beats()) == 99
    assert estate.count(0) == 1 and estate.count(1) == 1 and estate.count(4) == 0


def test_ids_query_returning_a_non_integer_for_an_integer_column_fails(tmp_path: Path, app_db: str) -> None:
    """A text id for an integer column fails the task without naming the id."""
    estate = Estate(tmp_path / "vectors", pa.int64())
    estate.add(list(range(10)))
    query = KeysQuery(url=app_db, sql="SELECT item_id FROM items WHERE owner_id = :user_id")
    with pytest.raises(PermanentError, match="not an integer") as failed:
        target_for(estate, match=None, ids_query=query, id_column="owner").purge(subject(), Beats())
    assert "item-" not in str(failed.value)
    assert len(estate.rows()) == 10
