"""FeastTarget beyond the contract: exactness, materialize, shared Redis hashes, types, atomic streaming rewrites."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.demo_estate import DEMO_VIEWS, DemoRepo, build_demo_repo
from tests.contract.base import OTHERS, SUBJECT, Beats, subject
from tests.contract.test_feast_contract import REDIS_ONLINE, RedisClient, feast_redis, feast_target
from workers.targets.base import PermanentError, RetryableError
from workers.targets.feast import FeastConfig

__all__ = ["feast_redis"]  # the fixture, imported for use here

os.environ.setdefault("FEAST_USAGE", "False")
ROOT = Path(__file__).resolve().parents[3]
USERS = [str(i) for i in range(1, 41)] + ["112", "123", "1234"]


def config(**fields: Any) -> FeastConfig:
    return FeastConfig.model_validate({"name": "user-features", "kind": "feast", "repo_path": "./repo", **fields})


def served(repo: DemoRepo, user_id: str) -> dict[str, list[Any]]:
    """What Feast's get_online_features returns for the user, every feature of both views."""
    store = repo.store()
    refs = [f"{v}:{f.name}" for v in DEMO_VIEWS for f in store.get_feature_view(v).features]
    key: int | str = int(user_id) if repo.entity_type == "int64" else user_id
    answer: dict[str, list[Any]] = store.get_online_features(
        features=refs, entity_rows=[{"user_id": key}], full_feature_names=True
    ).to_dict()
    return answer


def feature_values(repo: DemoRepo, user_id: str, view: str) -> list[Any]:
    return [v[0] for k, v in served(repo, user_id).items() if k.startswith(f"{view}__")]


def entity_key_bytes(repo: DemoRepo, user_id: str) -> bytes:
    """The online key Feast itself derives for the user (read-back aid, independent of the adapter)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value(int64_val=int(user_id)) if repo.entity_type == "int64" else Value(string_val=user_id)
    key: bytes = serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[value]), 3)
    return key


def sqlite_rows(repo: DemoRepo) -> dict[bytes, list[tuple[Any, ...]]]:
    """Every online row of the SQLite store, raw, grouped by entity key."""
    rows: dict[bytes, list[tuple[Any, ...]]] = {}
    with sqlite3.connect(repo.path / "online_store.db") as conn:
        for view in DEMO_VIEWS:
            for row in conn.execute(f'SELECT * FROM "lethe_demo_{view}" ORDER BY entity_key, feature_name'):
                rows.setdefault(row[0], []).append((view, *row))
    return rows


def redis_hashes(client: RedisClient) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter()}


def offline_tables(repo: DemoRepo) -> dict[str, Any]:
    import pyarrow.parquet as pq

    return {view: pq.read_table(path) for view, path in repo.files.items()}


def without(table: Any, repo: DemoRepo, user_id: str) -> Any:
    import pyarrow.compute as pc

    key: int | str = int(user_id) if repo.entity_type == "int64" else user_id
    return table.filter(pc.not_equal(table.column("user_id"), key))


@pytest.fixture(params=["sqlite", "redis"])
def flavour(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[DemoRepo, RedisClient | None]:
    """A materialized demo repo on the SQLite online store (INT64 key) or Redis db 13 (STRING key)."""
    if request.param == "sqlite":
        return build_demo_repo(tmp_path / "repo", USERS, rows_per_user=3, row_group_size=5), None
    client: RedisClient = request.getfixturevalue("feast_redis")
    repo = build_demo_repo(tmp_path / "repo", USERS, online_store=REDIS_ONLINE, entity_type="string",
                           rows_per_user=3, row_group_size=5)
    return repo, client


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> DemoRepo:
    """One SQLite repo for tests that must not change anything."""
    return build_demo_repo(tmp_path_factory.mktemp("feast") / "repo", USERS, rows_per_user=2)


# --- configuration (no Feast import) -------------------------------------------------------------------------


def test_value_defaults_to_the_entity_placeholder() -> None:
    """Without value:, the entity's own name is the placeholder and the identifier the target needs."""
    cfg = config(entity="user_id")
    assert cfg.value == "{user_id}"
    assert cfg.required_identifiers() == {"user_id"}
    assert config(entity="customer_id", value="{user_id}").required_identifiers() == {"user_id"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"entity": "user_id", "value": "42"}, "placeholder"),
        ({"entity": "user-id"}, "give value:"),
        ({"entity": "user_id", "feature_views": []}, "at least one view"),
        ({"entity": "user_id", "feature_views": ["a", "a"]}, "twice"),
        ({"entity": "user_id", "value": "{user_id!r}"}, "bad placeholder"),
        ({"entity": "user_id", "repo_path": ""}, "repo_path"),
    ],
)
def test_bad_configuration_is_refused_when_the_map_loads(fields: dict[str, Any], message: str) -> None:
    """A value without placeholder, an unnamed entity value, empty or repeated views, an empty path: refused."""
    with pytest.raises((ValidationError, ValueError), match=message):
        config(**fields)


def test_module_import_does_not_import_feast() -> None:
    """Loading the adapter and validating its config (as the data map does) imports neither Feast nor pyarrow."""
    probe = (
        "import sys\n"
        "from workers.targets.feast import FeastConfig\n"
        "FeastConfig(name='f', kind='feast', repo_path='r', entity='user_id')\n"
        "print(sorted(m for m in ('feast', 'pyarrow', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- exactness -----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_other_subjects_are_byte_for_byte_the_same(flavour: tuple[DemoRepo, RedisClient | None]) -> None:
    """After purging 12, every other online row/hash and every other offline row is exactly as before."""
    repo, client = flavour
    online_before = redis_hashes(client) if client else sqlite_rows(repo)
    offline_before = offline_tables(repo)
    served_before = {u: served(repo, u) for u in OTHERS}
    assert feast_target(repo.path).purge(subject(SUBJECT), Beats()) == 2 + 2 * 3

    online_after = redis_hashes(client) if client else sqlite_rows(repo)
    subject_key = entity_key_bytes(repo, SUBJECT) + (b"lethe_demo" if client else b"")
    assert subject_key in online_before
    assert online_after == {k: v for k, v in online_before.items() if k != subject_key}
    for view, table in offline_tables(repo).items():
        expected = without(offline_before[view], repo, SUBJECT)
        assert table.num_rows == offline_before[view].num_rows - 3
        assert table.schema.equals(offline_before[view].schema, check_metadata=True)
        assert table.equals(expected)  # same values, same order
    assert {u: served(repo, u) for u in OTHERS} == served_before
    assert all(v is None for v in feature_values(repo, SUBJECT, "user_profile_stats"))


@pytest.mark.integration
def test_materialize_after_purge_does_not_bring_the_subject_back(
    flavour: tuple[DemoRepo, RedisClient | None],
) -> None:
    """A later feast materialize over the whole window leaves the subject null and others served."""
    repo, _ = flavour
    target = feast_target(repo.path)
    other_before = served(repo, "123")
    target.purge(subject(SUBJECT), Beats())
    repo.materialize()
    assert all(v[0] is None for k, v in served(repo, SUBJECT).items() if k != "user_id")
    assert target.verify(subject(SUBJECT)) == 0
    assert served(repo, "123") == other_before


@pytest.mark.integration
def test_purging_one_view_keeps_the_other_views_fields_in_the_shared_redis_hash(
    tmp_path: Path, feast_redis: RedisClient
) -> None:
    """Purging user_profile_stats leaves user_activity's fields and _ts in the hash; purging both drops it."""
    repo = build_demo_repo(tmp_path / "repo", USERS, online_store=REDIS_ONLINE, entity_type="string")
    key = entity_key_bytes(repo, SUBJECT) + b"lethe_demo"
    fields_before = feast_redis.hgetall(key)
    activity_before = feature_values(repo, SUBJECT, "user_activity")
    profile_file = repo.files["user_profile_stats"].read_bytes()
    activity_file = repo.files["user_activity"].read_bytes()

    assert feast_target(repo.path, feature_views=["user_activity"]).purge(subject(SUBJECT), Beats()) == 1 + 2
    left = feast_redis.hgetall(key)
    assert b"_ts:user_profile_stats" in left and b"_ts:user_activity" not in left
    assert left == {f: v for f, v in fields_before.items() if f in left}
    assert len(left) == 1 + 3  # the profile view's timestamp and its three features
    assert all(v is None for v in feature_values(repo, SUBJECT, "user_activity"))
    assert all(v is not None for v in feature_values(repo, SUBJECT, "user_profile_stats"))
    assert repo.files["user_profile_stats"].read_bytes() == profile_file  # the other view's file untouched
    assert repo.files["user_activity"].read_bytes() != activity_file
    assert activity_before != feature_values(repo, SUBJECT, "user_activity")

    assert feast_target(repo.path, feature_views=["user_profile_stats"]).purge(subject(SUBJECT), Beats()) == 3
    assert feast_redis.exists(key) == 0


@pytest.mark.integration
def test_sqlite_purge_overwrites_the_deleted_bytes(tmp_path: Path) -> None:
    """No byte of the subject's entity key is left in the SQLite file, which a plain DELETE would leave."""
    repo = build_demo_repo(tmp_path / "repo", USERS)
    db = repo.path / "online_store.db"
    key = entity_key_bytes(repo, SUBJECT)
    control = tmp_path / "control.db"
    shutil.copy(db, control)
    with sqlite3.connect(control) as conn:  # the check can fail: a plain delete leaves the bytes behind
        conn.execute("PRAGMA secure_delete = OFF")
        for view in DEMO_VIEWS:
            conn.execute(f'DELETE FROM "lethe_demo_{view}" WHERE entity_key = ?', (key,))
    assert key in control.read_bytes()

    target = feast_target(repo.path)
    target.purge(subject(SUBJECT), Beats())
    leftovers = [p for p in repo.path.iterdir() if p.name.startswith("online_store.db")]
    assert all(key not in p.read_bytes() for p in leftovers)
    assert entity_key_bytes(repo, "123") in db.read_bytes()
    assert target.level == "bytes_reclaimed"


# --- Parquet rewrite -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_offline_rewrite_streams_by_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are read one row group at a time (never whole); a group the subject filled disappears."""
    import pyarrow.parquet as pq

    users = [str(i) for i in range(1, 31)]  # 3 rows each, 3 per group: user 12 fills group 11 alone
    repo = build_demo_repo(tmp_path / "repo", users, rows_per_user=3, row_group_size=3)
    before = offline_tables(repo)
    groups = pq.ParquetFile(repo.files["user_activity"]).num_row_groups
    assert groups == 30

    def whole_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a whole file was read")

    read_sizes: list[int] = []
    real_read_row_group = pq.ParquetFile.read_row_group

    def read_row_group(self: Any, *args: Any, **kwargs: Any) -> Any:
        table = real_read_row_group(self, *args, **kwargs)
        read_sizes.append(table.num_rows)
        return table

    monkeypatch.setattr(pq.ParquetFile, "read", whole_read)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", whole_read)
    monkeypatch.setattr(pq, "read_table", whole_read)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    beats = Beats()
    assert feast_target(repo.path).purge(subject(SUBJECT), beats) == 2 + 2 * 3
    monkeypatch.undo()

    assert read_sizes and max(read_sizes) == 3
    assert beats.calls >= 2 * groups
    for view, path in repo.files.items():
        rewritten = pq.ParquetFile(path)
        assert rewritten.num_row_groups == groups - 1
        assert {rewritten.metadata.row_group(i).num_rows for i in range(groups - 1)} == {3}
        assert pq.read_table(path).equals(without(before[view], repo, SUBJECT))


@pytest.mark.integration
def test_offline_rewrite_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write failing halfway leaves the original file byte-for-byte and no temp file; success replaces it."""
    from workers.targets import parquet_splice

    repo = build_demo_repo(tmp_path / "repo", USERS, rows_per_user=2, row_group_size=4)
    for path in repo.files.values():
        os.chmod(path, 0o640)
    files = {path: (path.read_bytes(), path.stat().st_ino) for path in repo.files.values()}
    listing = sorted(os.listdir(repo.path / "data"))
    real_moved = parquet_splice._moved  # called once per row group written to the new file
    calls: list[int] = []

    def failing_write(group: Any, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 7:  # past the subject's row group (the 6th) of the first file rewritten
            raise OSError(errno.EIO, "disk went away")
        return real_moved(group, *args)

    monkeypatch.setattr(parquet_splice, "_moved", failing_write)
    target = feast_target(repo.path)
    with pytest.raises(RetryableError, match="EIO") as info:
        target.purge(subject(SUBJECT), Beats())
    assert str(tmp_path) not in str(info.value)
    monkeypatch.undo()
    assert len(calls) == 7
    assert {path: path.read_bytes() for path in files} == {path: data for path, (data, _) in files.items()}
    assert sorted(os.listdir(repo.path / "data")) == listing

    assert target.purge(subject(SUBJECT), Beats()) == 2 + 2 * 2
    for path, (_, inode) in files.items():
        assert path.stat().st_ino != inode  # replaced, never edited in place
        assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(repo.path / "data")) == listing
    assert target.verify(subject(SUBJECT)) == 0


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("value", ["12a", "012", "+12", "1_2", "9223372036854775808"])
def test_int64_entity_with_unconvertible_value_fails_permanently(shared_repo: DemoRepo, value: str) -> None:
    """A value that is not a canonical INT64 fails count and purge (never a silent zero) and deletes nothing."""
    before = shared_repo.files["user_activity"].read_bytes(), sqlite_rows(shared_repo)
    target = feast_target(shared_repo.path)
    for call in (lambda: target.count(subject(value)), lambda: target.purge(subject(value), Beats())):
        with pytest.raises(PermanentError, match="not a canonical INT64") as info:
            call()
        assert value not in str(info.value)
    assert (shared_repo.files["user_activity"].read_bytes(), sqlite_rows(shared_repo)) == before


@pytest.mark.integration
def test_bad_repo_path_is_a_clear_permanent_error(tmp_path: Path) -> None:
    """A repo_path without feature_store.yaml fails with a message naming the target, not the path."""
    target = feast_target(tmp_path / "nowhere")
    with pytest.raises(PermanentError, match="Feast repo of target 'user-features' does not load") as info:
        target.count(subject(SUBJECT))
    assert "feature_store.yaml" in str(info.value)
    assert str(tmp_path) not in str(info.value)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"entity": "account_id"}, "no entity with join key 'account_id' in the repo \\(join keys: user_id\\)"),
        ({"feature_views": ["user_activity", "nope"]}, "unknown feature views: nope"),
    ],
)
def test_unknown_entity_or_view_is_a_clear_permanent_error(
    shared_repo: DemoRepo, fields: dict[str, Any], message: str
) -> None:
    """An entity or feature view the repo does not have fails check() and count() saying which."""
    target = feast_target(shared_repo.path, **{"entity": "user_id", **fields})
    checks: list[Callable[[], Any]] = [target.check, lambda: target.count(subject(SUBJECT))]
    for call in checks:
        with pytest.raises(PermanentError, match=message):
            call()


@pytest.fixture
def dead_redis_repo(tmp_path: Path, feast_redis: RedisClient) -> Iterator[DemoRepo]:
    """A repo whose Redis online store points at a closed port (materialized while Redis was up)."""
    repo = build_demo_repo(tmp_path / "repo", USERS, online_store=REDIS_ONLINE, entity_type="string")
    yaml_path = repo.path / "feature_store.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("127.0.0.1:6379", "127.0.0.1:1"))
    yield repo


@pytest.mark.integration
def test_online_store_connection_failure_is_retryable(dead_redis_repo: DemoRepo) -> None:
    """Redis down: count, purge and verify raise RetryableError, and purge touches no offline file first."""
    original = {v: p.read_bytes() for v, p in dead_redis_repo.files.items()}
    target = feast_target(dead_redis_repo.path)
    calls: list[Callable[[], Any]] = [
        lambda: target.count(subject(SUBJECT)),
        lambda: target.purge(subject(SUBJECT), Beats()),
        lambda: target.verify(subject(SUBJECT)),
    ]
    for call in calls:
        with pytest.raises(RetryableError, match="online store unreachable"):
            call()
    assert {v: p.read_bytes() for v, p in dead_redis_repo.files.items()} == original


def test_concurrent_purges_of_one_file_lose_no_erasure(tmp_path: Path) -> None:
    """Workers purging different subjects from the same Parquet files at once both succeed: no rewrite
    brings back rows another one removed."""
    import threading

    from orchestrator.identifiers import Subject
    from workers.targets.feast import FeastTarget

    repo = build_demo_repo(tmp_path / "repo", USERS, rows_per_user=3, row_group_size=5)
    before = offline_tables(repo)
    doomed = ["3", "4", "5", "6"]
    targets = [FeastTarget(config(repo_path=str(repo.path), entity="user_id")) for _ in doomed]
    barrier = threading.Barrier(len(doomed))

    def purge(target: FeastTarget, user: str) -> None:
        barrier.wait()
        target.purge(Subject({"user_id": user}), lambda done=None: None)

    threads = [threading.Thread(target=purge, args=(t, u)) for t, u in zip(targets, doomed, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = offline_tables(repo)
    for view, table in before.items():
        expected = table
        for user in doomed:
            expected = without(expected, repo, user)
        assert after[view].equals(expected), view
