"""The scale-out bench figure in miniature: every worker count runs both sides end to end on a few requests,
so a broken benchmark fails the suite. Nothing here measures speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.scaleout import bench_scaleout, describe

pytestmark = pytest.mark.integration


def test_scaleout_runs_each_worker_count_against_bare_celery(redis_broker: str, tmp_path: Path) -> None:
    """1 and 2 workers: every lethe request completes, the ledger verifies, the lock is sampled."""
    result = bench_scaleout(4, tmp_path, workers=(1, 2), url=redis_broker)
    assert [run["workers"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["ledger_verified"] is True
        assert run["lethe_tasks_per_second"] > 0 and run["bare_tasks_per_second"] > 0
        lock = run["chain_lock"]
        assert lock["samples"] > 0 and 0 <= lock["share_held"] <= 1 and lock["peak_connections"] >= 1
    assert result["runs"][0]["lethe_speedup"] == 1.0 and result["ratio"] > 0
    assert len(describe(result)) == 3
