"""What the lake targets (``parquet``, ``delta``, ``iceberg``) share above the file work of ``parquet_files``:
the ``where`` field of their config, the subject's values typed from a schema, and the deletion of orphans
(data files no version or snapshot references that still hold the subject)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets.parquet_files import Partitions, Value, check_where, typed_values

ORPHAN_GRACE = 3600.0  # seconds: an unreferenced file younger than this may be a concurrent writer's


def _checked_where(where: dict[str, str]) -> dict[str, str]:
    check_where(where)
    return where


# A lake config's subject selector, checked when the map loads (plain column names, at least one placeholder).
# An annotated type rather than a base class: each config keeps its own field order (and so its error order).
Where = Annotated[
    dict[str, str],
    AfterValidator(_checked_where),
    Field(description="column -> templated value; a row matches when every column equals it."),
]


def subject_values(where: Mapping[str, str], subject: Subject, schema: Any,
                   partitions: Partitions | None = None) -> dict[str, Value]:
    """The ``where`` templates filled from the subject, each typed from an Arrow schema (``typed_values``)."""
    return typed_values({column: fill(template, subject) for column, template in where.items()}, schema,
                        partitions)


def remove_orphans(file_counts: Iterable[tuple[str, int]], referenced: set[str]) -> None:
    """Delete each file of ``(file, the subject's rows in it)`` that holds the subject, is not ``referenced``
    and is older than ``ORPHAN_GRACE`` (a younger one may be a writer's, not yet committed: residue until then)."""
    now = time.time()
    for path, found in file_counts:
        if found and path not in referenced and now - os.stat(path).st_mtime > ORPHAN_GRACE:
            os.unlink(path)
