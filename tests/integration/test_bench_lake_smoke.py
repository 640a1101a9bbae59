"""The Delta bench figure in miniature: both sides run on small tables, so a broken benchmark fails the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.lake import bench_delta

pytestmark = pytest.mark.integration


def test_delta_figure_purges_the_subject_against_a_bare_delete(tmp_path: Path) -> None:
    """lethe erases the subject's rows from one file of four, to bytes_reclaimed; the ratio is measured."""
    result = bench_delta(tmp_path, rows=20_000, files=4, subject_rows=50, rounds=1)
    lethe = result["lethe_purge"]
    assert lethe["deleted"] == 50 and lethe["residue"] == 0 and lethe["level"] == "bytes_reclaimed"
    assert lethe["files_rewritten"] == 1 and lethe["files_total"] == 4
    assert result["ratio"] > 0
    spread = result["spread"]["lethe_purge"]
    assert spread["deleted"] == 48 and spread["residue"] == 0 and spread["files_rewritten"] == 4
