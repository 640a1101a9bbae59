"""The resurrection-watch bench figure in miniature: its code path runs, one S3 call per window. Nothing
here measures speed."""

from __future__ import annotations

import pytest

from tests.bench.watch import bench_watch

pytestmark = pytest.mark.integration


def test_a_watch_window_is_one_listing_and_one_tombstone_query(pg_database: str) -> None:
    result = bench_watch(objects=20, tombstones=200, items=10, rounds=1, database_url=pg_database)
    assert (result["identifiers"], result["tombstoned"], result["filed"]) == (10, 0, 0)
    assert result["s3_calls_per_window"] == 1
    assert result["ratio"] > 0 and result["per_subject_ratio"] > 0
