"""A small flat-memory figure: the stub S3 endpoint behaves like S3 for boto3 and S3Target, and
bench_flat_memory runs end to end in child processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.identifiers import Subject
from orchestrator.testing import FAKE_AWS_ENV
from tests.bench.memory import bench_flat_memory
from tests.bench.stub_s3 import StubS3
from workers.targets.s3 import S3Config, S3Target, s3_client

pytestmark = pytest.mark.integration

VERSIONS = 3  # 1,000 is no multiple of 3: listing pages end inside a key, so version-id markers are used


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StubS3, str]]:
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = StubS3({"12": 2000, "123": 500}, bucket="photos", versions=VERSIONS)
    with server as endpoint:
        yield server, endpoint


def listing(client: Any, prefix: str, page_size: int = 1000) -> list[tuple[str, str, bool]]:
    pages = client.get_paginator("list_object_versions").paginate(
        Bucket="photos", Prefix=prefix, PaginationConfig={"PageSize": page_size})
    return [(v["Key"], v["VersionId"], v["IsLatest"]) for page in pages for v in page.get("Versions", ())]


def test_stub_lists_in_s3_order_and_forgets_deleted_versions(stub: tuple[StubS3, str]) -> None:
    server, endpoint = stub
    client = s3_client(endpoint, None)
    assert client.get_bucket_versioning(Bucket="photos")["Status"] == "Enabled"
    whole = listing(client, "users/12/")
    assert len(whole) == 2000 * VERSIONS and len(set(whole)) == len(whole)
    assert listing(client, "users/12/", page_size=7) == whole  # markers resume exactly where a page ended
    assert [key for key, _, _ in whole] == sorted(key for key, _, _ in whole)
    assert whole[:2] == [("users/12/obj-0000000", "v2-0", True), ("users/12/obj-0000000", "v1-0", False)]
    assert len(listing(client, "users/1")) == 2500 * VERSIONS  # a prefix is a prefix of the string
    assert len(listing(client, "users/12/obj-000001")) == 10 * VERSIONS

    gone = [{"Key": "users/12/obj-0000000", "VersionId": "v2-0"},
            *({"Key": "users/12/obj-0000001", "VersionId": f"v{v}-1"} for v in range(VERSIONS))]
    answer = client.delete_objects(Bucket="photos", Delete={"Objects": gone})
    assert len(answer["Deleted"]) == len(gone) and not answer.get("Errors")
    quiet = client.delete_objects(Bucket="photos", Delete={"Objects": gone, "Quiet": True})
    assert not quiet.get("Deleted") and not quiet.get("Errors")  # deleting a deleted version succeeds
    after = listing(client, "users/12/obj-000000")
    assert after[:3] == [("users/12/obj-0000000", "v1-0", True), ("users/12/obj-0000000", "v0-0", False),
                         ("users/12/obj-0000002", "v2-2", True)]  # the next version became the latest
    assert server.live("12") == 2000 * VERSIONS - len(gone)


def test_s3_target_purges_the_subject_over_http_and_spares_the_bystander(stub: tuple[StubS3, str]) -> None:
    server, endpoint = stub
    target = S3Target(S3Config(name="photos", kind="s3", endpoint_url=endpoint, bucket="photos",
                               prefix="users/{user_id}/"))
    subject = Subject.parse({"user_id": "12"}, {"user_id": None})
    assert target.count(subject) == 2000 * VERSIONS
    assert target.purge(subject, lambda done=None: None) == 2000 * VERSIONS
    assert target.verify(subject) == 0
    assert server.live("12") == 0
    assert server.live("123") == 500 * VERSIONS  # users/123/ starts with users/12 but is not the subject's
    assert len(listing(s3_client(endpoint, None), "users/123/")) == 500 * VERSIONS


def test_bench_flat_memory_runs_end_to_end(tmp_path: Path) -> None:
    figures = bench_flat_memory(tmp_path, small=300, large=1500)
    assert {"small", "large", "ratio", "goal", "calls_per_1000", "note"} <= set(figures)
    for size, objects in (("small", 300), ("large", 1500)):
        run = figures[size]
        assert run["objects"] == run["deleted"] == objects and run["residue"] == 0 and run["subject_left"] == 0
        assert run["peak_rss_kib"] > 0 and run["seconds"] > 0
    assert figures["ratio"] == figures["large"]["peak_rss_kib"] / figures["small"]["peak_rss_kib"]
    assert 0 < figures["calls_per_1000"] <= 4
