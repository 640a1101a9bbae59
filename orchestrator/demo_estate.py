"""The demo's synthetic estate: store builders for ``lethe demo`` and the tests (never used by a purge).

- ``build_demo_repo``: a Feast feature repo (SQLite online store by default, Parquet offline files).
- ``build_training_manifest``: a Delta table listing the photos a training run used, with the demographic
  columns (age, gender, location) the seed's dataset carried, written in several commits so it has history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# --- Feast feature repo -----------------------------------------------------------------------------------

DEMO_PROJECT = "lethe_demo"
DEMO_VIEWS = ("user_profile_stats", "user_activity")
DEMO_TIME = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DemoRepo:
    """A feature repo built by ``build_demo_repo``."""

    path: Path
    entity_type: str  # "int64" or "string"
    files: dict[str, Path] = field(default_factory=dict)  # view name -> its Parquet file
    start: datetime = DEMO_TIME - timedelta(days=365)  # materialization window covering every row
    end: datetime = DEMO_TIME + timedelta(days=1)

    def store(self) -> Any:
        """A fresh feast.FeatureStore on the repo."""
        from feast import FeatureStore

        return FeatureStore(repo_path=str(self.path))

    def materialize(self) -> None:
        """``feast materialize`` over the whole window: the online store then mirrors the files."""
        self.store().materialize(self.start, self.end)


def demo_frames(user_ids: Sequence[str], entity_type: str = "int64", rows_per_user: int = 2) -> dict[str, Any]:
    """Offline rows for the demo views: ``rows_per_user`` daily rows per user, values derived from the id."""
    import pandas as pd

    def key(user: str) -> int | str:
        return int(user) if entity_type == "int64" else user

    rows = [(u, day) for u in user_ids for day in range(rows_per_user)]
    stamps = [DEMO_TIME - timedelta(days=day, hours=len(u)) for u, day in rows]
    digest = [sum(ord(c) * (i + 7) for i, c in enumerate(u)) + day for u, day in rows]
    ids = pd.Series([key(u) for u, _ in rows], dtype="int64" if entity_type == "int64" else "object")
    return {
        "user_profile_stats": pd.DataFrame({
            "user_id": ids, "event_timestamp": stamps,
            "age": pd.Series([18 + d % 60 for d in digest], dtype="int64"),
            "score": pd.Series([(d % 1000) / 10 for d in digest], dtype="float64"),
            "country": [("FR", "DE", "IE", "PL", "SE")[d % 5] for d in digest],
        }),
        "user_activity": pd.DataFrame({
            "user_id": ids, "event_timestamp": stamps,
            "logins_7d": pd.Series([d % 40 for d in digest], dtype="int64"),
            "last_device": [("ios", "android", "web")[d % 3] for d in digest],
        }),
    }


def write_demo_file(path: Path, frame: Any, row_group_size: int | None = None) -> None:
    """Write a demo view's rows to Parquet (several row groups when ``row_group_size`` is small)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, row_group_size=row_group_size or max(1, table.num_rows))


def build_demo_repo(
    repo_path: Path | str,
    user_ids: Sequence[str],
    *,
    online_store: Mapping[str, Any] | None = None,
    entity_type: str = "int64",
    project: str = DEMO_PROJECT,
    rows_per_user: int = 2,
    row_group_size: int | None = None,
    materialize: bool = True,
) -> DemoRepo:
    """A Feast repo for synthetic users: entity ``user`` (join key ``user_id``), two views on Parquet files
    (``user_profile_stats``: age, score, country; ``user_activity``: logins_7d, last_device), applied and,
    unless ``materialize`` is False, materialized. The online store is SQLite in the repo by default, or
    ``online_store`` (a feature_store.yaml mapping, e.g. ``{"type": "redis", "connection_string": ...}``).

    Data map entry for it: ``{kind: feast, repo_path: <repo_path>, entity: user_id}``.
    """
    import yaml
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    if entity_type not in ("int64", "string"):
        raise ValueError("entity_type must be 'int64' or 'string'")
    root = Path(repo_path).resolve()
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "project": project,
        "provider": "local",
        "registry": "registry.db",
        "online_store": dict(online_store or {"type": "sqlite", "path": "online_store.db"}),
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    (root / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    key_type = Int64 if entity_type == "int64" else String
    user = Entity(name="user", join_keys=["user_id"],
                  value_type=ValueType.INT64 if entity_type == "int64" else ValueType.STRING)
    schemas = {
        "user_profile_stats": [Field(name="age", dtype=Int64), Field(name="score", dtype=Float64),
                               Field(name="country", dtype=String)],
        "user_activity": [Field(name="logins_7d", dtype=Int64), Field(name="last_device", dtype=String)],
    }
    frames = demo_frames(user_ids, entity_type, rows_per_user)
    files: dict[str, Path] = {}
    objects: list[Any] = [user]
    for view, schema in schemas.items():
        files[view] = root / "data" / f"{view}.parquet"
        write_demo_file(files[view], frames[view], row_group_size)
        source = FileSource(name=f"{view}_source", path=f"data/{view}.parquet", timestamp_field="event_timestamp")
        objects.append(FeatureView(name=view, entities=[user], ttl=timedelta(0), online=True, source=source,
                                   schema=[Field(name="user_id", dtype=key_type), *schema]))
    repo = DemoRepo(path=root, entity_type=entity_type, files=files)
    store = repo.store()
    store.apply(objects)
    if materialize:
        store.materialize(repo.start, repo.end)
    return repo


# --- Delta training manifest --------------------------------------------------------------------------------

MANIFEST_GENDERS = ("female", "male", "nonbinary", "undisclosed")
MANIFEST_LOCATIONS = ("Lisbon", "Berlin", "Dublin", "Warsaw", "Malmo", "Lyon")


def manifest_rows(user_ids: Sequence[str], photos_per_user: int = 2) -> Any:
    """The manifest's rows for some users: one per photo (its S3 key) with the user's demographic columns,
    derived from the id so every build is the same."""
    import pyarrow as pa

    rows = [(u, p) for u in user_ids for p in range(1, photos_per_user + 1)]
    digest = {u: sum(ord(c) * (i + 3) for i, c in enumerate(u)) for u in user_ids}
    return pa.table({
        "user_id": pa.array([int(u) for u, _ in rows], pa.int64()),
        "photo_key": [f"users/{u}/photo-{p}.jpg" for u, p in rows],
        "age": pa.array([18 + digest[u] % 60 for u, _ in rows], pa.int32()),
        "gender": [MANIFEST_GENDERS[digest[u] % len(MANIFEST_GENDERS)] for u, _ in rows],
        "location": [MANIFEST_LOCATIONS[digest[u] % len(MANIFEST_LOCATIONS)] for u, _ in rows],
        "split": ["train" if digest[u] % 5 else "eval" for u, _ in rows],
    })


def build_training_manifest(uri: Path | str, user_ids: Sequence[str], *, photos_per_user: int = 2,
                            batches: int = 3) -> Path:
    """A Delta table of the photos a training run used, appended in ``batches`` commits (so older versions
    exist, each reading the users of the batches before it), then relabelled once (an update commit).

    Data map entry for it: ``{kind: delta, uri: <uri>, where: {user_id: "{user_id}"}}``.
    """
    from deltalake import DeltaTable, write_deltalake

    path = Path(uri).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    users = list(user_ids)
    size = max(1, -(-len(users) // batches))
    for start in range(0, len(users), size):
        write_deltalake(str(path), manifest_rows(users[start:start + size], photos_per_user), mode="append")
    # A curation pass moves one split: a version that rewrites files, as real manifests get.
    DeltaTable(str(path)).update(predicate="split = 'eval' AND age > 60", updates={"split": "'train'"})
    return path


# --- the application's users table ------------------------------------------------------------------------


def build_users_table(path: Path | str, user_ids: Sequence[str]) -> str:
    """An SQLite database with the application's ``users`` table: id, email, display name and the same
    demographic columns as the manifest. Returns its SQLAlchemy URL.

    Data map entry for it: ``{kind: sql, url: <url>, table: users, where: {id: "{user_id}"}, action: mask,
    mask: {email: null, display_name: "erased", ...}}``.
    """
    import sqlite3

    db = Path(path).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    columns = manifest_rows(user_ids, photos_per_user=1).to_pydict()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, display_name TEXT,"
                     " age INTEGER, gender TEXT, location TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)", [
            (uid, f"user{uid}@example.org", f"User {uid}", age, gender, location)
            for uid, age, gender, location in zip(columns["user_id"], columns["age"], columns["gender"],
                                                  columns["location"], strict=True)
        ])
    conn.close()
    return f"sqlite:///{db}"
