"""A rewrite without one subject splices the file: row groups that keep every row are copied byte for byte,
only those that lost rows are encoded again, and the result reads as the original minus the subject's rows.
Files a splice cannot carry over exactly are re-encoded whole, with the same result."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from workers.targets import parquet_splice
from workers.targets.parquet_files import local_fs, rewrite_without

ROWS, GROUP = 1200, 200  # six row groups; user_id sorted, so user 250 lives in the second alone


def table() -> pa.Table:
    ids = [i // 4 for i in range(ROWS)]
    return pa.table({
        "user_id": pa.array(ids, pa.int64()),
        "name": pa.array([None if i % 7 == 0 else f"name-{i % 13}" for i in range(ROWS)]),
        "tags": pa.array([[i, i + 1] if i % 3 else [] for i in range(ROWS)], pa.list_(pa.int32())),
        "at": pa.array([datetime(2024, 1, 1 + i % 28) for i in range(ROWS)], pa.timestamp("us")),
        "score": pa.array([i / 3 for i in range(ROWS)], pa.float64()),
    })


def group_bytes(path: Path, i: int) -> bytes:
    with open(path, "rb") as f:
        footer, _ = parquet_splice.read_footer(f)
        group = parquet_splice._get(footer, parquet_splice.FILE_ROW_GROUPS)[2][1][i]  # type: ignore[index]
        start, end = parquet_splice._group_range(group)
        f.seek(start)
        return f.read(end - start)


def purge(path: Path, user: int) -> int:
    return rewrite_without(local_fs(), str(path), {"user_id": user}, lambda done=None: None)


def without(original: pa.Table, user: int) -> pa.Table:
    return original.filter(pc.not_equal(original["user_id"], user))


@pytest.mark.parametrize("options", [{}, {"compression": "zstd"}, {"compression": "none", "version": "1.0"},
                                     {"use_dictionary": False}])
def test_only_the_subjects_row_group_is_encoded_again(tmp_path: Path, options: dict[str, Any]) -> None:
    path = tmp_path / "f.parquet"
    original = table()
    pq.write_table(original, path, row_group_size=GROUP, **options)
    untouched = {i: group_bytes(path, i) for i in (0, 2, 3, 4, 5)}
    with open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        assert parquet_splice.plan(f, pf.schema_arrow, {}) is not None

    assert purge(path, 62) == 4  # rows 248..251: the second row group
    assert pq.read_table(path).equals(without(original, 62))
    assert {i: group_bytes(path, i) for i in (0, 2, 3, 4, 5)} == untouched  # copied, not re-encoded
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == ROWS - 4 and meta.num_row_groups == 6
    stats = meta.row_group(1).column(0).statistics
    assert (stats.min, stats.max, meta.row_group(1).num_rows) == (50, 99, GROUP - 4)
    assert meta.row_group(2).column(0).statistics.min == 100  # moved groups keep their statistics
    assert pq.ParquetFile(path).read_row_group(5).equals(original.slice(5 * GROUP, GROUP))


def test_a_row_group_the_subject_filled_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    original = table().filter(pc.less(table()["user_id"], 100))  # 400 rows
    pq.write_table(original, path, row_group_size=4)  # user n fills group n alone
    assert purge(path, 7) == 4
    assert purge(path, 99) == 4  # the last group
    assert purge(path, 0) == 4  # the first
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 97
    assert pq.read_table(path).equals(original.filter(pc.invert(pc.is_in(original["user_id"],
                                                                          pa.array([0, 7, 99])))))


def test_no_matching_row_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1, 3, 5] * 10, pa.int64())}), path, row_group_size=10)
    before = path.read_bytes()
    assert purge(path, 2) == 0  # inside every group's min..max, in no row
    assert path.read_bytes() == before


@pytest.mark.parametrize("writer", [{"write_page_index": True}, {"write_page_checksum": True},
                                    {"use_deprecated_int96_timestamps": True}])
def test_files_a_splice_cannot_carry_are_reencoded_whole(tmp_path: Path, writer: dict[str, Any]) -> None:
    """A page index holds positions; INT96 timestamps would be written back as INT64 (another schema)."""
    path = tmp_path / "f.parquet"
    pq.write_table(table(), path, row_group_size=GROUP, **writer)
    before = pq.read_table(path)
    spliceable = writer == {"write_page_checksum": True}  # checksums live in page headers, copied as they are
    with open(path, "rb") as f:
        assert (parquet_splice.plan(f, pq.ParquetFile(f).schema_arrow, {}) is not None) == spliceable
    assert purge(path, 62) == 4
    assert pq.read_table(path).equals(without(before, 62))


def test_footer_codec_reproduces_pyarrows_footers(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(table(), path, row_group_size=17)  # > 15 row groups: the long list header
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - length:-8]
    assert parquet_splice.encode(parquet_splice._Reader(footer).struct()) == footer
