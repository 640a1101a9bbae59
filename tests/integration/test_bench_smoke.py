"""`make bench` in miniature: every figure's code path runs on tiny inputs, so a broken benchmark fails the
suite instead of the next person's bench run. Nothing here measures speed (the flat-memory and chaos
smokes live in their own files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench import report, stores
from tests.bench.orchestration import bench_orchestration
from tests.bench.s3 import bench_s3

pytestmark = pytest.mark.integration


def test_orchestration_runs_lethe_and_bare_celery_end_to_end(redis_broker: str, tmp_path: Path) -> None:
    """Both sides run the same number of tasks; every lethe request completes and the ledger verifies."""
    result = bench_orchestration(6, tmp_path, url=redis_broker)
    lethe, bare = result["lethe"], result["celery_noop"]
    assert result["tasks"] == bare["tasks"] == lethe["tasks"] == 24
    assert lethe["ledger_rows"]["completion_records"] == 4 * 7  # the 6 requests and the warm-up
    assert lethe["ledger_rows"]["certificates"] == 7 and lethe["ledger_verified"] is True
    assert result["ratio"] == lethe["seconds"] / bare["seconds"] > 0
    assert {"redis-server", "worker (main + pool)", "postgresql (all backends)"} <= set(lethe["peak_mib"])


def test_s3_erasure_figures_count_one_listing_per_normal_task() -> None:
    """The raw loop and both task paths erase every version. A normal task makes the raw loop's calls plus
    one verify listing (2 + 1,000/n per 1,000 versions: <= 2.1 from 10,000 on), and so does an approved one
    (its count, over max_items, keeps its listing too).
    The small request on a crowded bucket lists twice (count, verify), once less than before."""
    result = bench_s3(2000, rounds=1, bystanders=300, small=10)
    pages = 2
    assert result["raw_requests"] == {"ListObjectVersions": pages, "DeleteObjects": pages}
    assert result["lethe_requests"] == {"ListObjectVersions": pages + 1, "DeleteObjects": pages}
    assert result["approved_requests"] == {"ListObjectVersions": pages + 1, "DeleteObjects": pages}
    assert result["calls_per_1000"] == 2 + 1000 / 2000
    assert result["rate_ratio"] > 0 and result["approved_rate_ratio"] > 0 and result["rate_ratio_listed_first"] > 0
    small = result["small_request"]
    assert small["normal_requests"] == {"ListObjectVersions": 2, "DeleteObjects": 1}
    assert small["listed_twice_requests"] == {"ListObjectVersions": 3, "DeleteObjects": 1}
    assert small["raw_requests"] == {"ListObjectVersions": 1, "DeleteObjects": 1}
    assert small["ratio"] > 0


def test_intake_files_every_signed_event(redis_broker: str, pg_database: str, tmp_path: Path) -> None:
    """Signed events all become requests; the raw kombu round trip is the baseline."""
    result = stores.bench_intake(redis_broker, pg_database, tmp_path, 20)
    assert result["events"] == 20 and result["ratio"] > 0


def test_feast_figure_runs_on_small_data(tmp_path: Path) -> None:
    """The offline Parquet rewrite runs against its raw baseline (LanceDB's: test_bench_vectors_smoke)."""
    feast = stores.bench_feast_offline(tmp_path / "feast", 20_000, 2, rounds=1)
    assert feast["rows"] == 20_000 and feast["rate_ratio"] > 0


def test_sql_purge_figure_compares_two_complete_deletes() -> None:
    """The batched sql purge and the bare DELETE remove the same rows of one subject on PostgreSQL."""
    from tests.bench.sql import bench_sql

    result = bench_sql(2_000, batch_size=500, rounds=2)
    assert result["rows"] == 2_000 and result["batches"] >= 4
    assert result["lethe_purge"]["residue"] == 0 and result["ratio"] > 0


def test_report_writes_results_and_a_chart_keeping_earlier_figures(tmp_path: Path) -> None:
    """results.json merges with an earlier run's figures; ratios.png is a PNG with every figure."""
    report.write({"flat_memory": {"ratio": 1.01}}, tmp_path)
    data, chart = report.write({"s3_purge": {"rate_ratio": 1.07}, "orchestration": {"ratio": 1.7}}, tmp_path)
    results = json.loads(data.read_text())
    assert results["flat_memory"] == {"ratio": 1.01} and results["s3_purge"]["rate_ratio"] == 1.07
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.met("orchestration", 1.7) is False and report.met("s3_purge", 1.07) is True
    assert report.met("events", 3.0) is None
