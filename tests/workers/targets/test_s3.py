"""S3Target beyond the contract: batching, unversioned buckets, and vendor errors translated at the edge."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from orchestrator.identifiers import Subject
from orchestrator.testing import make_bucket, put_objects, version_keys, versions_per_owner
from workers.targets import s3 as s3_module
from workers.targets.base import PermanentError, RetryableError
from workers.targets.s3 import BATCH, KEY_RETRIES, S3Config, S3Target

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
