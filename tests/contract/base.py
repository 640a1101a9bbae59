"""The contract every target adapter must pass, written once (see workers/targets/base.py).

A target's contract test subclasses ``TargetContract`` (the name has no ``Test`` prefix, so only
subclasses are collected) and provides two fixtures:

- ``store``: a ``ContractStore`` for a fresh, empty instance of the real engine: it seeds a subject's data
  and reads the engine back directly (never through the target under test);
- ``target``: the adapter configured for that store, with selectors templated on ``{user_id}``.

Subject ``12`` is erased; ``123``, ``1234`` and ``112`` sit beside it and share its prefixes and suffixes,
so a selector that is too wide shows up as a changed count. Stores may also seed data that belongs to no
subject (keys like ``users/12``); ``total()`` counts it, so it must survive every purge too.
"""

from __future__ import annotations

from typing import Protocol

import pytest

from orchestrator.identifiers import Subject
from workers.targets.base import Target

SUBJECT = "12"
OTHERS = ("123", "1234", "112")
NOBODY = "99"  # a valid subject that never has data


class ContractStore(Protocol):
    """What a contract subclass provides about the engine behind its target."""

    def seed(self, user_id: str) -> int:
        """Write data for ``user_id``; return how many items a purge of that subject must remove."""

    def remaining(self, user_id: str) -> int:
        """Items of ``user_id`` still in the engine, read back directly."""

    def total(self) -> int:
        """Every item in the engine, whoever it belongs to."""


def subject(user_id: str) -> Subject:
    """A validated subject carrying one user_id, as the intake builds it."""
    return Subject.parse({"user_id": user_id}, {"user_id": None})


class Beats:
    """A heartbeat that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, done: int | None = None) -> None:
        self.calls += 1


class TargetContract:
    """Contract tests inherited by every target's test class."""

    @pytest.fixture
    def store(self) -> ContractStore:
        raise NotImplementedError("a contract subclass provides the `store` fixture")

    @pytest.fixture
    def target(self, store: ContractStore) -> Target:
        raise NotImplementedError("a contract subclass provides the `target` fixture")

    @pytest.fixture
    def seeded(self, store: ContractStore) -> dict[str, int]:
        """Data for the subject and its neighbours; the counts each purge must remove."""
        counts = {uid: store.seed(uid) for uid in (SUBJECT, *OTHERS)}
        assert all(n > 0 for n in counts.values()), "every seeded subject needs at least one item"
        # The store's own read-back must agree with what it seeded, or the checks below prove nothing.
        assert {uid: store.remaining(uid) for uid in counts} == counts
        return counts

    @pytest.fixture
    def beats(self) -> Beats:
        return Beats()

    def test_purge_removes_everything_of_the_subject(
        self, target: Target, store: ContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """purge removes every item of the subject, returns how many, and verify() then reports 0."""
        total_before = store.total()
        assert target.purge(subject(SUBJECT), beats) == seeded[SUBJECT]
        assert store.remaining(SUBJECT) == 0
        assert target.verify(subject(SUBJECT)) == 0
        assert store.total() == total_before - seeded[SUBJECT]

    def test_other_subjects_are_untouched(
        self, target: Target, store: ContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Purging subject 12 leaves 123, 1234, 112 and unowned data exactly as they were."""
        others_before = {uid: store.remaining(uid) for uid in OTHERS}
        unowned_before = store.total() - sum(seeded.values())
        target.purge(subject(SUBJECT), beats)
        assert {uid: store.remaining(uid) for uid in OTHERS} == others_before
        assert {uid: target.verify(subject(uid)) for uid in OTHERS} == {uid: seeded[uid] for uid in OTHERS}
        assert store.total() - sum(others_before.values()) == unowned_before

    def test_purge_is_idempotent(
        self, target: Target, store: ContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """A second purge of the same subject succeeds, returns 0 and verify() stays 0."""
        assert target.purge(subject(SUBJECT), beats) == seeded[SUBJECT]
        total_after_first = store.total()
        assert target.purge(subject(SUBJECT), beats) == 0
        assert target.verify(subject(SUBJECT)) == 0
        assert store.total() == total_after_first

    def test_purging_a_subject_without_data_succeeds_with_zero(
        self, target: Target, store: ContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """Purging a subject that has nothing returns 0, verifies 0 and removes nothing."""
        total_before = store.total()
        assert target.count(subject(NOBODY)) == 0
        assert target.purge(subject(NOBODY), beats) == 0
        assert target.verify(subject(NOBODY)) == 0
        assert store.total() == total_before
        assert {uid: store.remaining(uid) for uid in seeded} == seeded

    def test_purge_on_an_empty_store_succeeds_with_zero(
        self, target: Target, store: ContractStore, beats: Beats
    ) -> None:
        """Purging from a store that holds nobody's data returns 0 and verify() reports 0."""
        assert target.purge(subject(SUBJECT), beats) == 0
        assert target.verify(subject(SUBJECT)) == 0

    def test_count_is_a_dry_run(
        self, target: Target, store: ContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """count() returns what purge will remove and deletes nothing."""
        total_before = store.total()
        counted = target.count(subject(SUBJECT))
        assert counted == seeded[SUBJECT]
        assert target.count(subject(SUBJECT)) == counted
        assert store.total() == total_before
        assert {uid: store.remaining(uid) for uid in seeded} == seeded
        assert target.purge(subject(SUBJECT), beats) == counted

    def test_purge_calls_the_heartbeat(
        self, target: Target, store: ContractStore, seeded: dict[str, int], beats: Beats
    ) -> None:
        """purge calls heartbeat() at least once so a running purge keeps its lease."""
        target.purge(subject(SUBJECT), beats)
        assert beats.calls >= 1

    def test_target_satisfies_the_protocol(self, target: Target) -> None:
        """The adapter is a runtime-checkable Target with the class data the registry relies on."""
        assert isinstance(target, Target)
        assert isinstance(type(target).kind, str) and type(target).kind
        assert isinstance(type(target).capabilities, frozenset)
        assert all(issubclass(e, BaseException) for e in type(target).retryable_errors)
