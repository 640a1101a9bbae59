"""A worker process freezes its heap once per stage and target kind, and never freezes garbage."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from workers import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def fresh_heap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(heap, "_settled", set())
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_each_stage_and_kind_freezes_once(fresh_heap: None) -> None:
    heap.settle("ran", "s3")
    frozen = gc.get_freeze_count()
    assert frozen > 0
    later = [[n] for n in range(1000)]
    heap.settle("ran", "s3")
    assert gc.get_freeze_count() == frozen  # the same stage and kind: nothing more
    heap.settle("ran", "lancedb")
    assert gc.get_freeze_count() >= frozen + len(later)


def test_garbage_is_collected_before_the_freeze(fresh_heap: None) -> None:
    """A cycle no one holds is freed, not frozen (a frozen one would never be collected)."""
    node = Node()
    gone = weakref.ref(node)
    del node
    heap.settle("built", "memory")
    assert gone() is None and gc.get_freeze_count() > 0
