"""One listing per erasure: a task's count keeps its listing, the purge deletes from it, verify lists afresh.

The pipeline runs count, purge and verify of one task on one S3Target instance (workers/tasks.py ``_run``).
These tests hold the adapter to what that may and may not save: the purge lists nothing when its count
kept the listing, a kept listing serves only its own subject and only once, a count over ``max_items``
keeps its listing too (its purge in the same task, approved in advance, lists no more), a listing past the
memory budget is kept sealed on disk (never in clear), one past ``SPILL_MAX`` is not kept (its purge
streams), and verify never takes the kept listing's word for it.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from orchestrator.testing import make_bucket, put_objects, version_keys, versions_per_owner
from tests.workers.targets.test_s3 import PagedS3, StubS3, stubbed, subject, versions_of
from workers.targets import s3
from workers.targets.base import SliceExpired
from workers.targets.s3 import BATCH, S3Config, S3Target
from workers.targets.s3_listing import KeptListing
from workers.targets.selectors import KeysQuery, dispose_engine


def limited(stub: StubS3, max_items: int) -> S3Target:
    target = S3Target(S3Config(name="photos", kind="s3", bucket="photos", endpoint_url="http://127.0.0.1:1",
                               prefix="users/{user_id}/", max_items=max_items))
    target.client = stub
    return target


def no_beat(done: int | None = None) -> None:
    return None


@pytest.mark.parametrize("versions", [0, 1, 999, 1000, 1001, 2500])
def test_a_task_lists_once_to_erase_and_once_to_verify(versions: int) -> None:
    """count lists every page once; the purge lists nothing and deletes what count listed in batches of
    1,000; verify lists once more (one page: nothing is left)."""
    stub = PagedS3(versions_of(versions), marker_every=3)
    target = stubbed(stub)
    pages = max(1, -(-versions // BATCH))
    assert target.count(subject()) == versions and len(stub.list_calls) == pages
    beats: list[int | None] = []
    assert target.purge(subject(), lambda done=None: beats.append(done)) == versions
    assert len(stub.list_calls) == pages  # no second listing
    assert [len(call) for call in stub.delete_calls] == [BATCH] * (versions // BATCH) + (
        [versions % BATCH] if versions % BATCH else [])
    sent = [(o["Key"], o["VersionId"]) for call in stub.delete_calls for o in call]
    assert len(sent) == len(set(sent)) == versions
    assert beats and beats[-1] == versions and len(beats) >= len(stub.delete_calls)
    assert target.verify(subject()) == 0 and len(stub.list_calls) == pages + 1
    assert stub.versions == []


class LyingS3(PagedS3):
    """DeleteObjects answers success and deletes nothing: only a fresh listing can tell."""

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        self.delete_calls.append([dict(o) for o in Delete["Objects"]])
        return {}


def test_verify_lists_afresh_and_never_trusts_the_kept_listing() -> None:
    stub = LyingS3(versions_of(1500))
    target = stubbed(stub)
    assert target.count(subject()) == 1500
    assert target.purge(subject(), no_beat) == 1500  # what S3 answered
    assert target.verify(subject()) == 1500  # what S3 holds: residue, so the task is retried, not certified


def test_a_kept_listing_serves_only_its_own_subject_once() -> None:
    """Subject 123's listing is never used to purge 12 (whose purge lists afresh under users/12/ only);
    123's own purge uses it once, and a second purge of 123 lists afresh."""
    mine, theirs = versions_of(30, "users/12/"), versions_of(40, "users/123/")
    stub = PagedS3(sorted([*mine, *theirs]))
    target = stubbed(stub)
    assert target.count(subject("123")) == 40 and stub.list_calls == ["users/123/"]
    assert target.purge(subject("12"), no_beat) == 30
    assert stub.list_calls == ["users/123/", "users/12/"]
    assert Counter(v["Key"].split("/")[1] for v in stub.versions) == {"123": 40}
    assert target.purge(subject("123"), no_beat) == 40 and len(stub.list_calls) == 2  # kept: no listing
    assert target.purge(subject("123"), no_beat) == 0 and stub.list_calls[2:] == ["users/123/"]
    assert stub.versions == []


def test_a_count_over_max_items_counts_every_version_and_its_approved_purge_lists_no_more() -> None:
    """The admin is shown the exact count; a request approved in advance for it purges in the same task,
    from the count's listing."""
    stub = PagedS3(versions_of(2500))
    target = limited(stub, max_items=1000)
    assert target.count(subject()) == 2500 and len(stub.list_calls) == 3
    assert target.purge(subject(), no_beat) == 2500 and len(stub.list_calls) == 3
    assert stub.versions == []


def test_the_subjects_of_one_task_share_what_may_be_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task of several resolved values keeps at most SPILL_MAX versions in all: the value that does not
    fit is counted in full and purged by streaming."""
    monkeypatch.setattr(s3, "SPILL_MAX", 1500)
    first, second = versions_of(1000, "users/1/"), versions_of(1000, "users/2/")
    stub = PagedS3(sorted([*first, *second]))
    target = stubbed(stub)
    assert target.count(subject("1")) == 1000 and target.count(subject("2")) == 1000
    assert len(stub.list_calls) == 2
    assert target.purge(subject("1"), no_beat) == 1000 and len(stub.list_calls) == 2  # kept
    assert target.purge(subject("2"), no_beat) == 1000 and stub.list_calls[2:] == ["users/2/"]  # streamed
    assert stub.versions == []


def test_a_listing_past_the_memory_budget_is_kept_sealed_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past REMEMBER_MAX versions the listing goes on in a temporary file: no key is in it in clear (keys
    name subjects), the purge deletes every version of 123 once from it without listing again, and 12's
    versions (a key prefix of 123's) are untouched."""
    monkeypatch.setattr(s3, "REMEMBER_MAX", 1000)
    mine, theirs = versions_of(3500, "users/123/"), versions_of(700, "users/12/")
    stub = PagedS3(sorted([*mine, *theirs]))
    target = stubbed(stub)
    assert target.count(subject("123")) == 3500 and len(stub.list_calls) == 4
    kept = next(iter(target._listed.values()))
    assert kept.spilled and kept.in_memory == 1000
    assert kept._file is not None
    kept._file.flush()
    on_disk = os.pread(kept._file.fileno(), 10_000_000, 0)
    assert len(on_disk) > 2500 * 20 and b"users/" not in on_disk and b"k00" not in on_disk
    assert target.purge(subject("123"), no_beat) == 3500 and len(stub.list_calls) == 4
    sent = [(o["Key"], o["VersionId"]) for call in stub.delete_calls for o in call]
    assert len(sent) == len(set(sent)) == 3500 and all(key.startswith("users/123/") for key, _ in sent)
    assert [len(call) for call in stub.delete_calls] == [BATCH] * 3 + [500]
    assert Counter(v["Key"].split("/")[1] for v in stub.versions) == {"12": 700}
    assert kept._file is None  # gone with the purge: the key too


def test_a_spilled_listing_is_dropped_when_its_slice_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "REMEMBER_MAX", 0)
    stub = PagedS3(versions_of(2500))
    target = stubbed(stub)
    assert target.count(subject()) == 2500
    kept = next(iter(target._listed.values()))

    def beat(done: int | None = None) -> None:
        if done:
            raise SliceExpired(done)

    with pytest.raises(SliceExpired):
        target.purge(subject(), beat)
    assert kept._file is None and not target._listed
    assert stubbed(stub).purge(subject(), no_beat) == 1500 and stub.versions == []


pairs = st.tuples(st.text(max_size=30), st.text(max_size=12))


@settings(max_examples=200, deadline=None)
@given(pages=st.lists(st.lists(pairs, max_size=40), max_size=8), room=st.integers(0, 120),
       size=st.integers(1, 50))
def test_a_kept_listing_gives_back_every_pair_once_in_order(pages: list[list[tuple[str, str]]], room: int,
                                                            size: int) -> None:
    """Any keys (newlines, quotes, any Unicode, empty): what went in comes back, in order, in
    batches of ``size`` but the last, whether it stayed in memory or went to disk."""
    listing = KeptListing(room)
    for page in pages:
        listing.add(page)
    everything = [pair for page in pages for pair in page]
    assert listing.total == len(everything) and listing.in_memory <= room
    batches = list(listing.batches(size))
    assert [pair for batch in batches for pair in batch] == everything
    assert all(len(batch) == size for batch in batches[:-1]) and all(batches)
    listing.close()
    assert list(listing.batches(size)) == []


def test_counting_again_replaces_the_kept_listing() -> None:
    stub = PagedS3(versions_of(10))
    target = stubbed(stub)
    assert target.count(subject()) == 10
    stub.versions = stub.versions[:4]  # six gone meanwhile (another purge)
    assert target.count(subject()) == 4
    assert target.purge(subject(), no_beat) == 4 and [len(c) for c in stub.delete_calls] == [4]


def test_a_kept_purge_ends_its_slice_at_a_batch_and_the_next_slice_lists_afresh() -> None:
    stub = PagedS3(versions_of(2500))
    target = stubbed(stub)
    assert target.count(subject()) == 2500

    def beat(done: int | None = None) -> None:
        if done:
            raise SliceExpired(done)

    with pytest.raises(SliceExpired) as info:
        target.purge(subject(), beat)
    assert info.value.done == 1000 and len(stub.versions) == 1500
    assert stubbed(stub).purge(subject(), no_beat) == 1500  # a continuation: no count, a fresh listing
    assert stub.versions == []


def test_keys_query_keys_are_listed_once_to_erase_and_once_to_verify(tmp_path: Any) -> None:
    """Exact keys from the application's database: count lists each key once and keeps the exact key's
    versions only (``uploads/3.jpg.bak`` is someone else's), the purge lists nothing, verify lists each
    key again."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    mine = [f"uploads/{n}.jpg" for n in range(5)]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE uploads (owner_id TEXT, object_key TEXT)"))
        conn.execute(text("INSERT INTO uploads VALUES (:o, :k)"), [{"o": "12", "k": k} for k in mine])
    engine.dispose()
    stub = PagedS3(sorted([*mine, mine[3], "uploads/3.jpg.bak"]))
    target = S3Target(S3Config(name="uploads", kind="s3", bucket="photos", endpoint_url="http://127.0.0.1:1",
                               keys_query=KeysQuery(url=url, sql="SELECT object_key FROM uploads "
                                                                 "WHERE owner_id = :user_id")))
    target.client = stub
    try:
        assert target.count(subject("12")) == 6 and stub.list_calls == mine
        assert target.purge(subject("12"), no_beat) == 6 and stub.list_calls == mine
        assert target.verify(subject("12")) == 0 and stub.list_calls == mine + mine
    finally:
        dispose_engine(url)
    assert [v["Key"] for v in stub.versions] == ["uploads/3.jpg.bak"]


# -- against moto over HTTP ---------------------------------------------------------------------------

@pytest.fixture
def s3_calls(s3_endpoint: str) -> Iterator[Counter[str]]:
    """Every S3 request the shared client sends, by operation."""
    client = make_bucket(s3_endpoint, f"t-{uuid.uuid4().hex[:16]}")  # the shared client, and a warm pool
    sent: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        sent[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-send.s3", count)
    yield sent
    client.meta.events.unregister("before-send.s3", count)


@pytest.mark.integration
def test_on_moto_a_task_makes_one_listing_one_delete_and_one_verify(s3_endpoint: str, bucket: str,
                                                                     s3_calls: Counter[str]) -> None:
    """Subject 12's versions go in 3 S3 calls; users/123/, users/12 and users/12-archive/ stay whole."""
    put_objects(s3_endpoint, bucket, [f"users/12/p{n}.jpg" for n in range(4)], versions=2)
    put_objects(s3_endpoint, bucket, ["users/12/gone.jpg"], delete_marker=True)
    bystanders = ["users/123/p0.jpg", "users/12", "users/12-archive/a.jpg"]
    put_objects(s3_endpoint, bucket, bystanders, versions=2)
    target = S3Target(S3Config(name="photos", kind="s3", bucket=bucket, endpoint_url=s3_endpoint,
                               prefix="users/{user_id}/"))
    s3_calls.clear()
    assert target.count(subject("12")) == 10
    assert target.purge(subject("12"), no_beat) == 10
    assert target.verify(subject("12")) == 0
    assert s3_calls == {"ListObjectVersions": 2, "DeleteObjects": 1}
    assert version_keys(s3_endpoint, bucket, "users/12/") == []
    assert Counter(version_keys(s3_endpoint, bucket)) == {key: 2 for key in bystanders}


@pytest.mark.integration
def test_on_moto_a_version_written_after_the_count_is_residue_until_the_retry(s3_endpoint: str,
                                                                              bucket: str) -> None:
    """The kept listing misses a version written between count and purge: verify reads it back (the task
    is retried), and the retry's count, purge and verify erase it. The neighbour keeps everything."""
    put_objects(s3_endpoint, bucket, [f"users/{u}/p{n}.jpg" for u in ("12", "123") for n in range(3)])

    def target() -> S3Target:  # one per attempt, as the worker builds them
        return S3Target(S3Config(name="photos", kind="s3", bucket=bucket, endpoint_url=s3_endpoint,
                                 prefix="users/{user_id}/"))

    first = target()
    assert first.count(subject("12")) == 3
    put_objects(s3_endpoint, bucket, ["users/12/p0.jpg", "users/12/late.jpg"])  # a new version, a new key
    assert first.purge(subject("12"), no_beat) == 3
    assert first.verify(subject("12")) == 2
    retry = target()
    assert retry.count(subject("12")) == 2
    assert retry.purge(subject("12"), no_beat) == 2 and retry.verify(subject("12")) == 0
    assert versions_per_owner(s3_endpoint, bucket) == {"123": 3}
