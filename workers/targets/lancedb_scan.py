"""The byte scan that ends a LanceDB purge: every file under the table's directory is searched for what
the purge's selector wrote or matched (the lancedb module's stage 6 and "The scan looks for three things").

The data files of fragments the purge left as they are may be skipped (the caller says which: lancedb_fragments).
The predicate texts are only ever written by a delete, so a hit anywhere means the erasure is incomplete.
The quoted literals and raw identifiers may also sit inside other rows: a hit in the current version's data
or index files counts only when no live row's string column contains the value.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.targets.lancedb_config import COLUMN, local_path
from workers.targets.lancedb_predicates import Selector, quote_column

SCAN_CHUNK = 64 * 1024 * 1024


def files_holding(table: Any, dataset: Any, selector: Selector, skip: frozenset[str] = frozenset()) -> list[str]:
    """The kind of each file under the table's directory still holding the identifier (see the module
    docstring): manifest, transaction file, data file, index file, deletion file, branch file, other.
    ``skip``: data files (paths relative to the table) already read row by row without a match, left out
    when the current version still reads them as data files (lancedb_fragments says which)."""
    exact = [p.encode() for p in selector.predicates]  # only ever written by a delete: a hit anywhere
    values = list(dict.fromkeys(selector.literals + selector.raw))  # may also sit inside other rows
    needles = exact + values
    if not needles:
        return []
    root = local_path(dataset.uri)
    tracked = {row["path"]: row["type"] for row in
               dataset.tracked_files(min_version=dataset.version).read_all().to_pylist()}
    hits: list[str] = []
    explained: dict[bytes, bool] = {}
    for path in _files(root):
        relative = path.relative_to(root).as_posix()
        if relative in skip and tracked.get(relative) == "data file":
            continue
        found = _find(path, needles)
        if not found:
            continue
        kind = tracked.get(relative) or _kind_of(relative)
        values_only = not any(n in found for n in exact)
        live = relative in tracked and kind in ("data file", "index file")
        if values_only and live:
            for value in found:
                if value not in explained:
                    explained[value] = _explained(table, value.decode())
            if all(explained[value] for value in found):
                continue
        hits.append(kind)
    return hits


def _explained(table: Any, value: str) -> bool:
    """Whether live rows hold ``value`` inside a string column (so those bytes are theirs)."""
    import pyarrow.types as pat

    columns = [f.name for f in table.schema
               if (pat.is_string(f.type) or pat.is_large_string(f.type)) and COLUMN.fullmatch(f.name)]
    if not columns:
        return False
    literal = "'" + value.replace("'", "''") + "'"
    predicate = " OR ".join(f"contains({quote_column(c)}, {literal})" for c in columns)
    return int(table.count_rows(predicate)) > 0


def _files(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root, followlinks=False):
        for name in sorted(files):
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _find(path: Path, needles: list[bytes]) -> set[bytes]:
    """The needles occurring in the file, read in overlapping chunks (memory stays flat)."""
    found: set[bytes] = set()
    size = path.stat().st_size
    if size == 0:
        return found
    overlap = max(len(n) for n in needles)
    with path.open("rb") as handle:
        if size <= SCAN_CHUNK:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return {n for n in needles if view.find(n) >= 0}
        tail = b""
        while chunk := handle.read(SCAN_CHUNK):
            window = tail + chunk
            found.update(n for n in needles if n not in found and n in window)
            tail = window[-overlap:]
    return found


def _kind_of(relative: str) -> str:
    top = relative.split("/", 1)[0]
    return {
        "_versions": "manifest",
        "_transactions": "transaction file",
        "_deletions": "deletion file",
        "_indices": "index file",
        "data": "data file",
        "tree": "branch file",
        "_refs": "reference",
    }.get(top, "other")
