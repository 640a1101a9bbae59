"""The vector-store bench figures in miniature (LanceDB, Qdrant): both sides run on small data, so a broken
benchmark fails the suite. Nothing here measures speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.lancedb_purge import bench_lancedb
from tests.bench.qdrant import bench_qdrant

pytestmark = pytest.mark.integration


def test_lancedb_figure_rewrites_only_the_subjects_fragment(tmp_path: Path) -> None:
    """lethe erases the subject's vectors from one fragment of four, to bytes_reclaimed; spread, from all."""
    result = bench_lancedb(tmp_path, rows=20_000, fragments=4, rounds=1)
    lethe = result["lethe_purge"]
    assert result["erased"] == lethe["deleted"] == 20 and lethe["residue"] == 0
    assert lethe["level"] == "bytes_reclaimed" and (lethe["fragments_rewritten"], lethe["fragments_total"]) == (1, 4)
    assert result["compaction_cost_ratio"] > 0
    spread = result["spread"]["lethe_purge"]
    assert spread["deleted"] == 20 and spread["residue"] == 0 and spread["fragments_rewritten"] == 4


def test_qdrant_figure_purges_the_subject_against_a_bare_delete(tmp_path: Path) -> None:
    """lethe erases the subject's points in local mode to bytes_reclaimed; the bare delete by filter is timed."""
    result = bench_qdrant(tmp_path, points=3_000, rounds=1)
    lethe = result["lethe_purge"]
    assert result["erased"] == lethe["deleted"] == 3 and lethe["residue"] == 0
    assert lethe["level"] == "bytes_reclaimed" and result["ratio"] > 0
