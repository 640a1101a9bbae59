"""The latency figure in miniature: both sides run their round trips one after another and every lethe
request completes (nothing here measures speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.latency import bench_latency

pytestmark = pytest.mark.integration


def test_latency_times_each_request_against_a_bare_four_task_round_trip(redis_broker: str, tmp_path: Path) -> None:
    """5 requests x 4 targets each complete before the next; p50 <= p99 on both sides; the ledger verifies."""
    result = bench_latency(5, tmp_path, url=redis_broker)
    lethe, bare = result["lethe"], result["celery_noop"]
    assert result["requests"] == lethe["requests"] == bare["requests"] == 5 and result["targets"] == 4
    assert 0 < bare["p50_ms"] <= bare["p99_ms"] and 0 < lethe["p50_ms"] <= lethe["p99_ms"]
    assert 0 < lethe["ledger"]["p50_ms"] <= lethe["ledger"]["p99_ms"] and lethe["ledger_verified"] is True
    assert result["ratio_p50"] == lethe["p50_ms"] / bare["p50_ms"] > 0
