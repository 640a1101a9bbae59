"""Where a subject's rows physically sit in a LanceDB table, read in one pass before the delete (the lancedb
module's stage 2): how many live rows each predicate matches, the subject's vectors for ``verify``, the
fragments the purge must rewrite, and the data files the byte scan may skip.

A fragment is rewritten when it holds a live row of the subject, or bytes the selector scan cannot read:
a deletion vector (its soft-deleted rows, from an application's earlier delete or update, are still in its
data file and may be the subject's) or a column the schema has dropped (dropping a column leaves its bytes
in the file). Only a rewrite removes those. Every other fragment is left as it is: its rows are all live
and the selector scan read each of them without a match, so its data files hold none of the subject's
rows; they are the files the byte scan may skip. Lance data files are immutable and uniquely named, so a
skipped path is the very file that was read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from workers.targets.lancedb_predicates import Selector

MAX_PROBES = 1000  # of the subject's vectors per vector column, searched for by verify()
READ_BATCH = 8192  # rows per batch of the selector scan (memory stays flat for a subject with many rows)


@dataclass
class Holdings:
    live: list[int]  # live rows matching each of the selector's predicates, in order
    probes: dict[str, list[list[float]]]  # vector column -> the subject's vectors (up to MAX_PROBES)
    fragments: int = 0  # in the version read
    rewrite: set[int] = field(default_factory=set)  # fragment ids the purge rewrites
    clean_files: frozenset[str] = frozenset()  # data files (relative to the table) the byte scan may skip


def read_holdings(dataset: Any, selector: Selector) -> Holdings:
    """One selector scan of ``dataset`` (a lance dataset at the version the purge starts from)."""
    import numpy as np
    import pyarrow.types as pat

    columns = [f.name for f in dataset.schema
               if pat.is_fixed_size_list(f.type) and pat.is_floating(f.type.value_type)]
    probes: dict[str, list[list[float]]] = {c: [] for c in columns}
    live: list[int] = []
    holding: set[int] = set()
    for predicate in selector.predicates:
        matched = 0
        for batch in dataset.to_batches(columns=columns, filter=predicate, with_row_address=True,
                                        batch_size=READ_BATCH):
            matched += batch.num_rows
            addresses = batch.column("_rowaddr").to_numpy(zero_copy_only=False)
            holding.update(int(f) for f in np.unique(addresses >> np.uint64(32)))  # address = fragment << 32 | row
            for column in columns:
                room = MAX_PROBES - len(probes[column])
                if room > 0:
                    probes[column].extend(v for v in batch.column(column).slice(0, room).to_pylist() if v is not None)
        live.append(matched)
    fragments = dataset.get_fragments()
    schema_fields = _field_ids(dataset.lance_schema.fields())
    rewrite = set(holding)
    clean: set[str] = set()
    for fragment in fragments:
        files = fragment.metadata.files
        unread = fragment.metadata.deletion_file is not None or any(not set(d.fields) <= schema_fields for d in files)
        if unread:  # bytes the selector scan cannot read (soft-deleted rows, dropped columns)
            rewrite.add(fragment.fragment_id)
        elif fragment.fragment_id not in rewrite:
            clean.update(f"data/{data.path}" for data in files)
    return Holdings(live=live, probes={c: v for c, v in probes.items() if v}, fragments=len(fragments), rewrite=rewrite,
                    clean_files=frozenset(clean))


def _field_ids(fields: Iterable[Any]) -> set[int]:
    ids: set[int] = set()
    for f in fields:
        ids.add(int(f.id()))
        ids |= _field_ids(f.children())
    return ids
