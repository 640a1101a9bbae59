"""S3Target runs the target contract against moto's S3 server over HTTP, on versioned buckets.

Two selectors: a key prefix, and exact keys looked up in the application's PostgreSQL database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from orchestrator.testing import put_objects, version_keys
from tests.contract.base import SUBJECT, Beats, ContractStore, TargetContract, subject
from workers.targets.s3 import S3Config, S3Target
from workers.targets.selectors import KeysQuery, dispose_engine

pytestmark = pytest.mark.integration


def _seed_keys(endpoint: str, bucket: str, multi: list[str], marked: list[str], single: list[str]) -> int:
    """Two versions of each ``multi`` key; a version under a delete marker for each ``marked`` key; one
    version of each ``single`` key. Returns versions plus markers written."""
    return (put_objects(endpoint, bucket, multi, versions=2)
            + put_objects(endpoint, bucket, marked, versions=1, delete_marker=True)
            + put_objects(endpoint, bucket, single, versions=1))


class PrefixStore:
    """Objects under ``users/<id>/``: several keys with two versions, one under a delete marker, one
    nested; plus unowned keys that share the subject's prefix text but not its folder."""

    UNOWNED = ("users/12", "users/12.bak", "users/12-archive/a.jpg", "archive/users/12/a.jpg")

    def __init__(self, endpoint: str, bucket: str) -> None:
        self.endpoint, self.bucket = endpoint, bucket
        put_objects(endpoint, bucket, self.UNOWNED, versions=1)

    def seed(self, user_id: str) -> int:
        root = f"users/{user_id}/"
        return _seed_keys(self.endpoint, self.bucket,
                          multi=[f"{root}photo-{n}.jpg" for n in range(3)],
                          marked=[f"{root}old.jpg"],
                          single=[f"{root}nested/deep/notes.txt"])

    def remaining(self, user_id: str) -> int:
        return len(version_keys(self.endpoint, self.bucket, f"users/{user_id}/"))

    def total(self) -> int:
        return len(version_keys(self.endpoint, self.bucket))


class TestS3PrefixContract(TargetContract):
    @pytest.fixture
    def store(self, s3_endpoint: str, bucket: str) -> ContractStore:
        return PrefixStore(s3_endpoint, bucket)

    @pytest.fixture
    def target(self, store: ContractStore, s3_endpoint: str, bucket: str) -> S3Target:
        return S3Target(S3Config(name="photos", kind="s3", bucket=bucket, endpoint_url=s3_endpoint,
                                 prefix="users/{user_id}/"))

    def test_versions_and_delete_markers_all_go(
        self, target: S3Target, store: PrefixStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Every old version and the delete marker are erased, not only the current versions."""
        assert seeded[SUBJECT] == 3 * 2 + 2 + 1  # 2 versions x 3 keys, version + marker, 1 version
        target.purge(subject(SUBJECT), beats)
        listed = target.client.list_object_versions(Bucket=store.bucket, Prefix="users/12/")
        assert listed.get("Versions", []) == [] and listed.get("DeleteMarkers", []) == []


# Keys shared across owners' prefixes: subject 12's exact keys are prefixes of 123's keys.
OWNED_KEYS: dict[str, list[str]] = {
    "12": ["photos/12.jpg", "docs/12"],
    "123": ["photos/123.jpg", "docs/123", "photos/12.jpg.bak", "docs/12/notes.txt"],
    "1234": ["photos/1234.jpg", "docs/1234"],
    "112": ["photos/112.jpg", "docs/112"],
}


class KeysQueryStore:
    """Keys listed in an application table ``uploads(owner_id, object_key)``; every subject also has a
    row for a key that was never uploaded, and subject 12 a duplicate row."""

    def __init__(self, endpoint: str, bucket: str, db_url: str) -> None:
        self.endpoint, self.bucket = endpoint, bucket
        self.db = create_engine(db_url)
        with self.db.begin() as conn:
            conn.execute(text("CREATE TABLE uploads (owner_id TEXT NOT NULL, object_key TEXT NOT NULL)"))
        put_objects(endpoint, bucket, ["photos/12.jpg.orphan"], versions=1)  # in no row: nobody's

    def _rows(self, user_id: str, keys: list[str]) -> None:
        with self.db.begin() as conn:
            conn.execute(text("INSERT INTO uploads (owner_id, object_key) VALUES (:o, :k)"),
                         [{"o": user_id, "k": k} for k in keys])

    def seed(self, user_id: str) -> int:
        keys = OWNED_KEYS[user_id]
        extra = [keys[0]] if user_id == SUBJECT else []  # the same object on two rows is one object
        self._rows(user_id, [*keys, *extra, f"never-uploaded/{user_id}.jpg"])
        photos = [k for k in keys if k.startswith("photos/")]
        return _seed_keys(self.endpoint, self.bucket, multi=photos,
                          marked=[k for k in keys if k not in photos][:1],
                          single=[k for k in keys if k not in photos][1:])

    def _owned(self, user_id: str) -> list[str]:
        with self.db.connect() as conn:
            rows = conn.execute(text("SELECT DISTINCT object_key FROM uploads WHERE owner_id = :o"),
                                {"o": user_id})
            return [key for (key,) in rows]

    def remaining(self, user_id: str) -> int:
        per_key = Counter(version_keys(self.endpoint, self.bucket))
        return sum(per_key[key] for key in self._owned(user_id))

    def total(self) -> int:
        return len(version_keys(self.endpoint, self.bucket))


class TestS3KeysQueryContract(TargetContract):
    @pytest.fixture
    def store(self, s3_endpoint: str, bucket: str, pg_database: str) -> Iterator[ContractStore]:
        store = KeysQueryStore(s3_endpoint, bucket, pg_database)
        yield store
        store.db.dispose()
        dispose_engine(pg_database)  # the adapter's pool, before the drop

    @pytest.fixture
    def target(self, store: ContractStore, s3_endpoint: str, bucket: str, pg_database: str) -> S3Target:
        query = KeysQuery(url=pg_database, sql="SELECT object_key FROM uploads WHERE owner_id = :user_id")
        return S3Target(S3Config(name="uploads", kind="s3", bucket=bucket, endpoint_url=s3_endpoint,
                                 keys_query=query))

    def test_only_the_exact_keys_go(
        self, target: S3Target, store: KeysQueryStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Keys of 123 that start with 12's keys (photos/12.jpg.bak, docs/12/notes.txt) all stay."""
        target.purge(subject(SUBJECT), beats)
        left = Counter(version_keys(store.endpoint, store.bucket))
        assert left["photos/12.jpg"] == 0 and left["docs/12"] == 0
        assert left["photos/12.jpg.bak"] == 2
        assert left["docs/12/notes.txt"] == 1
        assert left["photos/12.jpg.orphan"] == 1
