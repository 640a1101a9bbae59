"""The seed figure in miniature (tests/bench/seed.py): a dataset withdrawal of 3,000 photos and what was
derived from them, whose worker is SIGKILLed mid-purge; another worker finishes it, and the stub S3 says
that no photo was deleted twice. Nothing here measures speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.seed import DATASET, KEPT, KEPT_PHOTOS, MODELS, bench_raw, check, lethe_run

pytestmark = pytest.mark.integration


def test_a_killed_withdrawal_resumes_without_deleting_any_photo_twice(redis_broker: str, tmp_path: Path) -> None:
    # Every DeleteObjects waits 0.3 s, so the kill lands between two batches of the 3 and the second worker
    # has photos left to delete.
    run = lethe_run(tmp_path, scale=0.001, kill=True, url=redis_broker, delete_delay=0.3)
    killed = run["killed"]
    assert killed is not None and 0 < killed["deleted_before_kill"] < run["photos"] == 3000
    check(run)  # completed; photos, vectors, feature rows (offline and online) and models of the dataset gone
    assert run["photos_left"] == 0 and run["kept_photos_left"] == KEPT_PHOTOS
    assert run["redeleted"] == 0  # the resumed purge listed again: what the killed worker deleted was not
    assert run["extra_delete_calls"] == 0
    assert run["left"]["vectors"] == [KEPT] and run["left"]["feature_sources"] == [KEPT]
    assert run["left"]["model_versions"] == 1 and run["tasks"]["face-models"] == MODELS
    assert run["certificate"] == "dataset"
    assert any(name.startswith("second worker") for name in run["peak_mib"])


def test_the_raw_loop_deletes_each_photo_once() -> None:
    raw = bench_raw(2500)
    assert raw["stub_requests"] == {"ListObjectVersions": 1 + 3, "DeleteObjects": 3}  # a warm-up, 3 pages
    assert raw["deletes_per_second"] > 0 and raw["peak_mib"] > 0
    assert DATASET != KEPT
