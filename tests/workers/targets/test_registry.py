"""The lazy registry of target kinds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workers.targets.base import UnknownTargetKind, known_kinds, target_class
from workers.targets.memory import MemoryTarget

ROOT = Path(__file__).resolve().parents[3]


def test_s3_is_imported_only_when_its_kind_is_used() -> None:
    """Importing the registry loads neither the S3 adapter nor boto3; target_class('s3') then does."""
    probe = (
        "import sys\n"
        "from workers.targets.base import target_class\n"
        "assert 'workers.targets.s3' not in sys.modules and 'boto3' not in sys.modules, 'eager import'\n"
        "cls = target_class('s3')\n"
        "assert 'workers.targets.s3' in sys.modules, 'not loaded'\n"
        "print(cls.__module__, cls.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["workers.targets.s3", "S3Target"]


def test_target_class_returns_the_adapter_classes() -> None:
    """target_class resolves built-in kinds to their classes, the same object on every call."""
    from workers.targets.s3 import S3Target

    assert target_class("s3") is S3Target
    assert target_class("s3") is target_class("s3")
    assert target_class("memory") is MemoryTarget


def test_unknown_kind_suggests_the_closest() -> None:
    """An unknown kind 's4' raises UnknownTargetKind that asks "did you mean 's3'"."""
    with pytest.raises(UnknownTargetKind, match=r"did you mean 's3'\?") as info:
        target_class("s4")
    assert "'s4'" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_unknown_kind_without_a_close_match_lists_the_known_kinds() -> None:
    """A kind like nothing known lists the known kinds instead of guessing."""
    with pytest.raises(UnknownTargetKind) as info:
        target_class("zzzzzzzz")
    assert "did you mean" not in str(info.value)
    assert "s3" in str(info.value) and "memory" in str(info.value)


def test_known_kinds_include_the_builtins() -> None:
    """known_kinds maps s3 and memory to their module:Class paths."""
    kinds = known_kinds()
    assert kinds["s3"] == "workers.targets.s3:S3Target"
    assert kinds["memory"] == "workers.targets.memory:MemoryTarget"
