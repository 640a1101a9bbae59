"""Contract tests the lake targets share, written once: mixed into a target's contract class beside
``TargetContract`` (no ``Test`` prefix, so only the concrete classes are collected).

The store of a lake contract has an ``owner`` column of ``owner_type`` (int64 or string) and ``_owner(text)``,
the text as that column stores it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.identifiers import Subject
from tests.contract.base import OTHERS, SUBJECT, Beats, subject
from workers.targets.base import PermanentError

# Spellings an integer column refuses: not canonical, not a number, SQL-shaped, out of int64's range.
UNCONVERTIBLE = ["012", "+12", "12.0", "1e3", "12' OR '1'='1", "99999999999999999999"]
# Values shaped like SQL: each is compared as one literal.
HOSTILE = ("12' OR '1'='1", "12'--", "' OR owner IS NOT NULL OR '", "12\" OR 1=1 --")
# The seed plan of the tables with history: each subject's rows in one commit, mixed with rows of nobody.
PER_SUBJECT = {SUBJECT: 40, "123": 25, "1234": 10, "112": 5}
NOBODY = ("120", "012", "1", "21", "1120", "12 ", "x12")


class HistoryStore:
    """The rows of a table with history: a background commit of nobody's rows at the start, then one commit
    per seeded subject. A subclass sets up its table before ``__init__`` here and provides ``_append``."""

    def __init__(self, integer: bool) -> None:
        self.integer = integer
        self.owner_type = pa.int64() if integer else pa.string()
        # "012", "12 " and "x12" look like 12 only as text: as integers they are not written at all.
        self.nobody = [o for o in NOBODY if not integer or (o.isdigit() and not o.startswith("0"))]
        self._append(self.nobody * 30)

    def _owner(self, text: str) -> Any:
        return int(text) if self.integer else text

    def _append(self, owners: list[str]) -> None:
        raise NotImplementedError("a store writes one commit of these owners' rows")

    def rows(self, owners: list[str]) -> dict[str, Any]:
        return {
            "owner": pa.array([self._owner(o) for o in owners], self.owner_type),
            "photo": [f"photos/{o}/{i}.jpg" for i, o in enumerate(owners)],
            "age": pa.array([18 + i % 60 for i in range(len(owners))], pa.int32()),
        }

    def seed(self, user_id: str) -> int:
        self._append([user_id] * PER_SUBJECT[user_id] + self.nobody * 3)
        return PER_SUBJECT[user_id]


class IntegerColumnContract:
    @pytest.mark.parametrize("value", UNCONVERTIBLE)
    def test_unconvertible_values_fail_and_delete_nothing(
        self, target: Any, store: Any, seeded: dict[str, int], beats: Beats, value: str
    ) -> None:
        """An integer column takes canonical decimal integers in range only; anything else fails."""
        total = store.total()
        with pytest.raises(PermanentError):
            target.purge(Subject.parse({"user_id": value}, {"user_id": None}), beats)
        assert store.total() == total


class StringColumnContract:
    def test_injection_attempts_are_plain_values(
        self, target: Any, store: Any, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Values shaped like SQL are compared as one literal: nothing matches, nothing is deleted."""
        total = store.total()
        for value in HOSTILE:
            hostile = Subject.parse({"user_id": value}, {"user_id": None})
            assert target.count(hostile) == 0 and target.purge(hostile, beats) == 0
        assert store.total() == total


class TableHistoryContract:
    """For tables with history (Delta versions, Iceberg snapshots). The class provides an ``orphan`` fixture:
    the path of a data file under the table that no version references."""

    def test_only_files_holding_the_subject_are_rewritten(
        self, target: Any, store: Any, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Statistics (Delta's file min/max, Iceberg's manifest bounds) prune the delete: of the 5 data files
        only the subject's is rewritten (the background file and the look-alikes' exclude it)."""
        target.purge(subject(SUBJECT), beats)
        assert target.files_total == 1 + len(seeded)
        assert target.files_rewritten == 1

    def test_a_purge_killed_after_the_delete_is_finished_by_the_next(
        self, target: Any, store: Any, seeded: dict[str, int]
    ) -> None:
        """Killed after the delete: older versions still read the subject; the resumed purge deletes nothing
        more, ends the history (vacuum and log cut, or snapshot expiry), and verify then finds nothing."""

        class Killed(BaseException):  # like the SystemExit of a worker shut down mid-purge
            pass

        def dies(done: int | None = None) -> None:
            raise Killed

        with pytest.raises(Killed):
            target.purge(subject(SUBJECT), dies)
        assert store.remaining(SUBJECT) == 0 and target.verify(subject(SUBJECT)) > 0  # history still has them
        assert type(target)(target.config).purge(subject(SUBJECT), Beats()) == 0
        assert target.verify(subject(SUBJECT)) == 0 and store.rows_in_every_file(SUBJECT) == 0
        assert {uid: store.remaining(uid) for uid in OTHERS} == {uid: seeded[uid] for uid in OTHERS}

    def test_an_orphan_file_holding_the_subject_is_removed_once_old(
        self, target: Any, store: Any, seeded: dict[str, int], beats: Beats, orphan: Path, monkeypatch: Any
    ) -> None:
        """A file no version references (a failed writer's leftover) that holds the subject counts as residue
        while it may be a concurrent writer's, and is deleted once older than the grace period."""
        pq.write_table(pa.table({"owner": pa.array([store._owner(SUBJECT)] * 3, store.owner_type)}), orphan)
        target.purge(subject(SUBJECT), beats)
        assert orphan.exists() and target.verify(subject(SUBJECT)) == 3
        monkeypatch.setattr("workers.targets.lake_common.ORPHAN_GRACE", -1.0)
        target.purge(subject(SUBJECT), beats)
        assert not orphan.exists() and target.verify(subject(SUBJECT)) == 0


def check_where_is_refused(config: Callable[[dict[str, str]], Any], odd_column: str) -> None:
    """The map-load rule every lake config's ``where`` obeys: ``config(where)`` refuses a where without a
    placeholder, and one with ``odd_column``, a column that is not a plain name."""
    with pytest.raises(ValueError, match="placeholder"):
        config({"owner": "12"})
    with pytest.raises(ValueError, match="plain column"):
        config({odd_column: "{user_id}"})
