"""S3Target beyond the contract: batching, unversioned buckets, and vendor errors translated at the edge."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from sqlalchemy import create_engine, text

from orchestrator.identifiers import Subject
from orchestrator.testing import make_bucket, put_objects, version_keys, versions_per_owner
from workers.targets import s3 as s3_module
from workers.targets import s3_config
from workers.targets.base import HeldError, PermanentError, RetryableError, SliceExpired
from workers.targets.s3 import BATCH, KEY_RETRIES, S3Config, S3Target
from workers.targets.selectors import KeysQuery, dispose_engine

USER = "u-4711-secret"  # a value that must never appear in an error message
PREFIX = f"users/{USER}/"


def subject(user_id: str = USER) -> Subject:
    return Subject.parse({"user_id": user_id}, {"user_id": None})


def make_target(bucket: str = "photos", endpoint: str | None = "http://127.0.0.1:1") -> S3Target:
    return S3Target(S3Config(name="photos", kind="s3", bucket=bucket, endpoint_url=endpoint,
                             prefix="users/{user_id}/"))


def client_error(code: str, status: int, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"boom on {PREFIX}a.jpg"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class StubS3:
    """Just enough of a boto3 S3 client: a listing of versions, and DeleteObjects answers scripted per key.

    ``script[key]`` lists the error codes the key's next delete attempts get; once it runs out the
    version is deleted. A code in ``gone`` removes the version too (it was already gone), any other code
    keeps it."""

    def __init__(self, keys: list[str], script: dict[str, list[str]] | None = None,
                 list_error: Exception | None = None, delete_error: Exception | None = None) -> None:
        self.versions = [{"Key": k, "VersionId": f"v-{n}"} for n, k in enumerate(keys)]
        self.script = {k: list(codes) for k, codes in (script or {}).items()}
        self.list_error, self.delete_error = list_error, delete_error
        self.delete_calls: list[list[dict[str, str]]] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "list_object_versions"
        return SimpleNamespace(paginate=self._paginate)

    def _paginate(self, Bucket: str, Prefix: str) -> Iterator[dict[str, Any]]:
        if self.list_error is not None:
            raise self.list_error
        # Like S3, the listing holds every key starting with the prefix; the stub adds nothing else
        # unless its keys were built to lie outside the prefix.
        yield {"Versions": [dict(v) for v in self.versions]}

    def get_object_legal_hold(self, **_: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "NoSuchObjectLockConfiguration"}}, "GetObjectLegalHold")

    def get_object_retention(self, **_: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "NoSuchObjectLockConfiguration"}}, "GetObjectRetention")

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        objects = Delete["Objects"]
        self.delete_calls.append([dict(o) for o in objects])
        if self.delete_error is not None:
            raise self.delete_error
        errors = []
        for obj in objects:
            codes = self.script.get(obj["Key"], [])
            code = codes.pop(0) if codes else None
            if code is not None:
                errors.append({"Key": obj["Key"], "VersionId": obj["VersionId"], "Code": code,
                               "Message": f"{code} for {obj['Key']}"})
            if code is None or code in ("NoSuchKey", "NoSuchVersion"):
                self.versions = [v for v in self.versions if v != obj]
        return {"Errors": errors} if errors else {}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff sleeps of the S3 adapter, recorded instead of waited."""
    waited: list[float] = []
    monkeypatch.setattr(s3_module, "time", SimpleNamespace(sleep=waited.append))
    return waited


def stubbed(stub: StubS3) -> S3Target:
    target = make_target()
    target.client = stub
    return target


def assert_sanitised(exc: BaseException) -> None:
    message = str(exc)
    assert USER not in message and PREFIX not in message and ".jpg" not in message
    # Nor is the vendor's error chained where a traceback would print it.
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


# -- against moto over HTTP ---------------------------------------------------------------------------

@pytest.mark.integration
def test_purge_over_a_thousand_versions_uses_several_batches(s3_endpoint: str, bucket: str) -> None:
    """1,100 versions of one subject go in several DeleteObjects batches of at most 1,000, all of them."""
    put_objects(s3_endpoint, bucket, [f"users/12/k{n:04d}.jpg" for n in range(550)], versions=2)
    put_objects(s3_endpoint, bucket, [f"users/123/k{n}.jpg" for n in range(3)], versions=2)
    target = make_target(bucket, s3_endpoint)
    real = target.client
    batches: list[int] = []

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def delete_objects(self, **kwargs: Any) -> Any:
            batches.append(len(kwargs["Delete"]["Objects"]))
            return real.delete_objects(**kwargs)

    target.client = Spy()
    beats: list[None] = []
    assert target.purge(subject("12"), lambda done=None: beats.append(done)) == 1100
    assert len(batches) >= 2 and max(batches) <= BATCH and sum(batches) == 1100
    assert len(beats) >= len(batches)
    assert target.verify(subject("12")) == 0
    assert versions_per_owner(s3_endpoint, bucket) == {"123": 6}


@pytest.mark.integration
def test_unversioned_bucket(s3_endpoint: str) -> None:
    """On a bucket without versioning the subject's objects go and the neighbour's stay."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    make_bucket(s3_endpoint, name, versioned=False)
    put_objects(s3_endpoint, name, ["users/12/a.jpg", "users/12/b.jpg", "users/123/a.jpg"], versions=2)
    target = make_target(name, s3_endpoint)
    assert target.count(subject("12")) == 2  # overwrites leave one object per key
    assert target.purge(subject("12"), lambda done=None: None) == 2
    assert target.verify(subject("12")) == 0
    assert version_keys(s3_endpoint, name) == ["users/123/a.jpg"]


@pytest.mark.integration
@pytest.mark.parametrize("operation", ["count", "purge", "verify"])
def test_missing_bucket_is_permanent(s3_endpoint: str, operation: str) -> None:
    """A bucket that does not exist fails permanently with the vendor's code and no key in the text."""
    target = make_target(f"missing-{uuid.uuid4().hex[:12]}", s3_endpoint)
    args = (subject(), lambda done=None: None) if operation == "purge" else (subject(),)
    with pytest.raises(PermanentError, match="NoSuchBucket") as info:
        getattr(target, operation)(*args)
    assert "ListObjectVersions" in str(info.value)
    assert_sanitised(info.value)


def test_unreachable_endpoint_is_retryable() -> None:
    """A closed port (botocore EndpointConnectionError) becomes a RetryableError."""
    target = make_target("photos", "http://127.0.0.1:9")
    target.client = boto3.session.Session().client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="x",  # never sent anywhere real
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=1),
    )
    with pytest.raises(RetryableError, match="EndpointConnectionError") as info:
        target.purge(subject(), lambda done=None: None)
    assert_sanitised(info.value)
    assert "127.0.0.1" not in str(info.value)


# -- DeleteObjects per-key errors, with a stub client ---------------------------------------------

KEYS = [f"{PREFIX}{n}.jpg" for n in range(4)]


@pytest.mark.parametrize("code", ["NoSuchKey", "NoSuchVersion"])
def test_already_gone_is_success(code: str, sleeps: list[float]) -> None:
    """Per-key NoSuchKey/NoSuchVersion count as erased: no error, no re-send, not counted as removed."""
    stub = StubS3(KEYS, script={KEYS[1]: [code]})
    assert stubbed(stub).purge(subject(), lambda done=None: None) == len(KEYS) - 1
    assert len(stub.delete_calls) == 1 and sleeps == []
    assert stub.versions == []


def test_slowdown_keys_are_resent_then_succeed(sleeps: list[float]) -> None:
    """Keys answered SlowDown are re-sent alone, with backoff, until S3 deletes them."""
    stub = StubS3(KEYS, script={KEYS[0]: ["SlowDown", "SlowDown"], KEYS[2]: ["SlowDown"]})
    assert stubbed(stub).purge(subject(), lambda done=None: None) == len(KEYS)
    assert [[o["Key"] for o in call] for call in stub.delete_calls] == [KEYS, [KEYS[0], KEYS[2]], [KEYS[0]]]
    assert stub.delete_calls[1][0] == {"Key": KEYS[0], "VersionId": "v-0"}  # the same version, re-sent
    assert len(sleeps) == 2 and all(s > 0 for s in sleeps)
    assert stub.versions == []


def test_access_denied_keys_fail_permanently_after_the_rest_is_deleted(sleeps: list[float]) -> None:
    """Per-key AccessDenied ends in PermanentError naming the code, once the rest of the batch is gone."""
    stub = StubS3(KEYS, script={KEYS[1]: ["AccessDenied"] * 10, KEYS[3]: ["AccessDenied"] * 10})
    with pytest.raises(PermanentError, match="AccessDenied x2") as info:
        stubbed(stub).purge(subject(), lambda done=None: None)
    assert [v["Key"] for v in stub.versions] == [KEYS[1], KEYS[3]]
    assert len(stub.delete_calls) == 1  # refused versions are not re-sent
    assert_sanitised(info.value)


def test_persistent_slowdown_is_retryable(sleeps: list[float]) -> None:
    """A key still throttled after every re-send ends in RetryableError; the others are deleted."""
    stub = StubS3(KEYS, script={KEYS[2]: ["SlowDown"] * (KEY_RETRIES + 5)})
    with pytest.raises(RetryableError, match="DeleteObjects") as info:
        stubbed(stub).purge(subject(), lambda done=None: None)
    assert len(stub.delete_calls) == KEY_RETRIES + 1
    assert len(sleeps) == KEY_RETRIES
    assert [v["Key"] for v in stub.versions] == [KEYS[2]]
    assert_sanitised(info.value)


# -- ClientError from a whole call ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [("SlowDown", 503, RetryableError), ("ServiceUnavailable", 503, RetryableError),
     ("InternalError", 500, RetryableError), ("AccessDenied", 403, PermanentError),
     ("AllAccessDisabled", 403, PermanentError)],
)
@pytest.mark.parametrize("operation", ["count", "purge", "verify"])
def test_listing_errors_are_translated(code: str, status: int, expected: type[Exception],
                                       operation: str) -> None:
    """A ClientError from ListObjectVersions becomes Retryable (throttling, 5xx) or Permanent (the rest)."""
    stub = StubS3(KEYS, list_error=client_error(code, status, "ListObjectVersions"))
    args = (subject(), lambda done=None: None) if operation == "purge" else (subject(),)
    with pytest.raises(expected) as info:
        getattr(stubbed(stub), operation)(*args)
    assert type(info.value) is expected
    assert str(info.value) == f"S3 ListObjectVersions on bucket photos: {code}"
    assert_sanitised(info.value)
    assert stub.delete_calls == []


@pytest.mark.parametrize(("code", "status", "expected"),
                         [("SlowDown", 503, RetryableError), ("AccessDenied", 403, PermanentError)])
def test_delete_call_errors_are_translated(code: str, status: int, expected: type[Exception]) -> None:
    """A ClientError failing the whole DeleteObjects call is translated the same way."""
    stub = StubS3(KEYS, delete_error=client_error(code, status, "DeleteObjects"))
    with pytest.raises(expected, match=f"^S3 DeleteObjects on bucket photos: {code}$") as info:
        stubbed(stub).purge(subject(), lambda done=None: None)
    assert type(info.value) is expected
    assert_sanitised(info.value)


def test_listing_outside_the_prefix_deletes_nothing() -> None:
    """A listing that returns a key outside the selector's prefix raises PermanentError, deleting nothing."""
    stub = StubS3([f"{PREFIX}a.jpg", f"users/{USER}-other/b.jpg", f"{PREFIX}c.jpg"])
    with pytest.raises(PermanentError, match="outside the selector") as info:
        stubbed(stub).purge(subject(), lambda done=None: None)
    assert stub.delete_calls == []
    assert len(stub.versions) == 3
    assert USER not in str(info.value) and ".jpg" not in str(info.value)


# -- one pass over a paged listing ------------------------------------------------------------------

class PagedS3(StubS3):
    """StubS3 whose listing pages like S3 and moto: ``page`` entries per call in key order, each call
    continuing after the previous page's last version (KeyMarker/VersionIdMarker), versions and delete
    markers in separate lists. moto answers a listing that continues from a version no longer there with
    an empty page (the purge would end early, leaving residue): the stub fails the test instead."""

    def __init__(self, keys: list[str], page: int = 1000, marker_every: int = 0, **kwargs: Any) -> None:
        super().__init__(keys, **kwargs)
        self.page = page
        self.markers = {v["VersionId"] for n, v in enumerate(self.versions) if marker_every and n % marker_every == 0}
        self.list_calls: list[str] = []  # the Prefix of each ListObjectVersions call

    def _paginate(self, Bucket: str, Prefix: str) -> Iterator[dict[str, Any]]:
        after: dict[str, str] | None = None
        while True:
            self.list_calls.append(Prefix)
            listed = [v for v in self.versions if v["Key"].startswith(Prefix)]
            if after is not None:
                assert after in listed, "the listing continued from a deleted version: moto ends it there"
                listed = listed[listed.index(after) + 1:]
            chunk = listed[:self.page]
            yield {"Versions": [dict(v) for v in chunk if v["VersionId"] not in self.markers],
                   "DeleteMarkers": [dict(v) for v in chunk if v["VersionId"] in self.markers]}
            if len(listed) <= self.page:
                return
            after = chunk[-1]


def versions_of(n: int, prefix: str = PREFIX) -> list[str]:
    """``n`` versions in S3 order: keys with one, two and three versions, so pages end inside a key."""
    keys: list[str] = []
    k = 0
    while len(keys) < n:
        keys += [f"{prefix}k{k:05d}.jpg"] * min(1 + k % 3, n - len(keys))
        k += 1
    return keys


@pytest.mark.parametrize(("versions", "page"),
                         [(0, 1000), (1, 1000), (999, 1000), (1000, 1000), (1001, 1000), (2500, 1000),
                          (3000, 1000), (2500, 7), (40, 1)])
def test_purge_is_one_pass_with_as_many_calls_as_a_raw_loop(versions: int, page: int) -> None:
    """Every version and marker goes in one pass: each page listed once (no final empty listing), each
    version sent once, in DeleteObjects of 1,000: ceil(n/1,000) of them, the count of a raw boto3 loop."""
    stub = PagedS3(versions_of(versions), page=page, marker_every=3)
    beats: list[int | None] = []
    assert stubbed(stub).purge(subject(), lambda done=None: beats.append(done)) == versions
    assert stub.versions == []
    assert len(stub.list_calls) == max(1, -(-versions // page))
    assert [len(call) for call in stub.delete_calls] == [BATCH] * (versions // BATCH) + (
        [versions % BATCH] if versions % BATCH else [])
    sent = [(o["Key"], o["VersionId"]) for call in stub.delete_calls for o in call]
    assert len(sent) == len(set(sent)) == versions
    assert len(beats) >= len(stub.list_calls) and beats[-1] == versions


def test_count_and_verify_list_each_page_once() -> None:
    stub = PagedS3(versions_of(2500), marker_every=4)
    target = stubbed(stub)
    assert target.count(subject()) == 2500 and len(stub.list_calls) == 3
    assert target.verify(subject()) == 2500 and len(stub.list_calls) == 6
    assert stub.delete_calls == []


def test_a_slice_ends_at_a_heartbeat_and_the_next_purge_finishes() -> None:
    """SliceExpired from the heartbeat stops the purge between pages; what was listed but not yet deleted
    is listed again by the next slice, which removes the rest."""
    stub = PagedS3(versions_of(2500), marker_every=3)

    def beat(done: int | None = None) -> None:
        if done:
            raise SliceExpired(done)

    with pytest.raises(SliceExpired) as info:
        stubbed(stub).purge(subject(), beat)
    assert info.value.done == 1000 and len(stub.versions) == 1500
    assert stubbed(stub).purge(subject(), lambda done=None: None) == 1500
    assert stub.versions == []


def test_refused_versions_on_several_pages_are_sent_once(sleeps: list[float]) -> None:
    keys = versions_of(2500)
    refused = {keys[10], keys[2100]}
    stub = PagedS3(keys, script={key: ["AccessDenied"] * 10 for key in refused})
    with pytest.raises(PermanentError, match="AccessDenied x") as info:
        stubbed(stub).purge(subject(), lambda done=None: None)
    assert {v["Key"] for v in stub.versions} == refused
    sent = [o["Key"] for call in stub.delete_calls for o in call]
    assert all(sent.count(key) == keys.count(key) for key in refused)  # each refused version: once
    assert len(stub.delete_calls) == 3
    assert_sanitised(info.value)


def test_keys_query_lists_each_key_once(tmp_path: Any) -> None:
    """Exact keys from the application's database: one listing per key however many batches the purge
    takes (listing afresh each round would query and re-list every key already done)."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    mine = [f"uploads/{n:05d}.jpg" for n in range(2500)]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE uploads (owner_id TEXT, object_key TEXT)"))
        conn.execute(text("INSERT INTO uploads VALUES (:o, :k)"),
                     [{"o": "12", "k": k} for k in mine] + [{"o": "123", "k": "uploads/other.jpg"}])
    engine.dispose()
    stub = PagedS3(sorted([*mine, mine[7], "uploads/00007.jpg.bak", "uploads/other.jpg"]))
    target = S3Target(S3Config(name="uploads", kind="s3", bucket="photos", endpoint_url="http://127.0.0.1:1",
                               keys_query=KeysQuery(url=url, sql="SELECT object_key FROM uploads "
                                                                 "WHERE owner_id = :user_id")))
    target.client = stub
    try:
        assert target.purge(subject("12"), lambda done=None: None) == 2501  # mine[7] has two versions
    finally:
        dispose_engine(url)
    assert Counter(stub.list_calls) == Counter(mine)
    assert len(stub.delete_calls) == 3
    assert sorted(v["Key"] for v in stub.versions) == ["uploads/00007.jpg.bak", "uploads/other.jpg"]


# -- Object Lock ----------------------------------------------------------------------------------

class LockedS3(StubS3):
    """Every version is refused with AccessDenied; Object Lock answers as scripted."""

    def __init__(self, keys: list[str], legal_hold: dict[str, Any], retention: dict[str, Any] | None) -> None:
        super().__init__(keys, script={key: ["AccessDenied"] for key in keys})
        self.legal_hold, self.retention = legal_hold, retention

    def get_object_legal_hold(self, **_: Any) -> dict[str, Any]:
        return self.legal_hold

    def get_object_retention(self, **kwargs: Any) -> dict[str, Any]:
        if self.retention is None:
            return super().get_object_retention(**kwargs)
        return self.retention


def test_object_lock_retention_is_held() -> None:
    until = datetime.now(UTC) + timedelta(days=30)
    stub = LockedS3(KEYS, {"LegalHold": {}}, {"Retention": {"Mode": "GOVERNANCE", "RetainUntilDate": until}})
    with pytest.raises(HeldError, match=f"governance retention until {until.date().isoformat()}") as info:
        stubbed(stub).purge(subject(), lambda done=None: None)
    assert_sanitised(info.value)


def test_legal_hold_answered_without_a_status_is_no_hold() -> None:
    """moto answers a version without a legal hold with an empty LegalHold (S3 with an error): neither is a
    lock, and neither escapes as anything but the refusal."""
    stub = LockedS3(KEYS, {"LegalHold": {}}, None)
    with pytest.raises(PermanentError, match=f"AccessDenied x{len(KEYS)}"):
        stubbed(stub).purge(subject(), lambda done=None: None)


# -- the client -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["2024-05-01T12:00:00.000Z", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123456Z",
                                   "2024-05-01T14:00:00+02:00", "Wed, 01 May 2024 12:00:00 GMT", "1714564800",
                                   "2024-05-01T12:00:00"])
def test_timestamps_parse_as_botocore_parses_them(value: str) -> None:
    """The shared client parses S3's ISO 8601 without dateutil, to the same instant; the rest as botocore."""
    from botocore.utils import parse_timestamp

    parsed, expected = s3_config._parse_timestamp(value), parse_timestamp(value)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()  # naive only where botocore's is


# -- against moto over HTTP: one pass, no residue ----------------------------------------------------

def seed_in_moto(bucket: str, keys: list[str], delete_marker_every: int) -> int:
    """Versions for ``keys`` (a key listed twice gets two versions) and a delete marker on top of every
    ``delete_marker_every``-th key, written by moto's backend directly: puts over HTTP run at ~160/s.
    Returns versions plus markers."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for n, key in enumerate(keys):
        backend.put_object(bucket, key, f"{key} {n}".encode())
    distinct = sorted(set(keys))
    for key in distinct[::delete_marker_every]:
        backend.delete_object(bucket, key)
    return len(keys) + len(distinct[::delete_marker_every])


@pytest.mark.integration
@pytest.mark.parametrize(("versions", "marker_every", "expected"), [(2400, 3, 2800), (2400, 2, 3000)])
def test_purge_on_moto_leaves_no_residue_in_one_pass(s3_endpoint: str, bucket: str, versions: int,
                                                     marker_every: int, expected: int) -> None:
    """Thousands of versions and delete markers, keys with up to three versions across page boundaries:
    every one goes, in ceil(n/1,000) listings and as many DeleteObjects, and nothing else is touched.
    (moto ends a listing that continues from a deleted version: the purge deletes a page only once the
    next one is listed.)"""
    assert seed_in_moto(bucket, versions_of(versions, "users/12/"), marker_every) == expected
    bystanders = ["users/123/a.jpg", "users/12", "users/12-archive/a.jpg", "archive/users/12/a.jpg"]
    put_objects(s3_endpoint, bucket, bystanders, versions=2)
    target = make_target(bucket, s3_endpoint)
    requests: Counter[str] = Counter()

    def sent(event_name: str, **_: Any) -> None:
        requests[event_name.rsplit(".", 1)[-1]] += 1

    target.client.meta.events.register("before-send.s3", sent)
    try:
        assert target.purge(subject("12"), lambda done=None: None) == expected
    finally:
        target.client.meta.events.unregister("before-send.s3", sent)
    calls = -(-expected // BATCH)
    assert requests == {"ListObjectVersions": calls, "DeleteObjects": calls}
    assert version_keys(s3_endpoint, bucket, "users/12/") == []
    assert Counter(version_keys(s3_endpoint, bucket)) == {key: 2 for key in bystanders}
