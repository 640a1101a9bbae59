"""`lethe demo` as a user runs it: a bare machine, embedded stores, the real pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_erases_and_verifies(tmp_path: Path) -> None:
    """The demo completes every erasure, finds no residue and no damage, and verifies its ledger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    result = subprocess.run([str(Path(sys.executable).with_name("lethe")), "demo", "--subjects", "40", "--erase", "3",
                             "--workdir", str(tmp_path / "demo")], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every erased user is gone from every store and everyone else is intact" in result.stdout
    assert "requests completed: 3/3" in result.stdout
    assert len(list((tmp_path / "demo" / "certificates").glob("*.json"))) == 3
