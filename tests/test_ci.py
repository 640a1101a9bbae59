"""CI never skips silently: under CI=true every kind of skip fails the run, naming the reason; outside CI a
skip is still a skip. Runs pytest on a small module with the suite's CI plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPS = {
    "marked": "import pytest\n\n@pytest.mark.skipif(True, reason='no chromium here')\ndef test_it():\n    pass\n",
    "called": "import pytest\n\ndef test_it():\n    pytest.skip('no chromium here')\n",
    "fixture": "import pytest\n\n@pytest.fixture\ndef browser():\n    pytest.skip('no chromium here')\n\n"
               "def test_it(browser):\n    pass\n",
    "module": "import pytest\n\npytest.importorskip('no_such_module_chromium_here')\n\ndef test_it():\n    pass\n",
}


def run_pytest(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.fixtures.ci", "-p", "no:cacheprovider",
                           "-rA", "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("kind", sorted(SKIPS))
def test_a_skip_fails_under_ci(tmp_path: Path, kind: str) -> None:
    """A skipif mark, a pytest.skip in a test or a fixture, an importorskip at import: each fails under
    CI=true, and the failure names the skip's reason."""
    result = run_pytest(tmp_path, SKIPS[kind], ci="true")
    assert result.returncode != 0, result.stdout
    assert "skipped under CI=true" in result.stdout, result.stdout
    assert "chromium" in result.stdout, result.stdout


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_a_skip_is_a_skip_outside_ci(tmp_path: Path, ci: str | None) -> None:
    """Without CI, a skip is reported as skipped and the run passes."""
    result = run_pytest(tmp_path, SKIPS["marked"], ci=ci)
    assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout


def test_xfail_is_not_a_skip(tmp_path: Path) -> None:
    """An expected failure is still fine under CI."""
    source = "import pytest\n\n@pytest.mark.xfail(reason='known', strict=True)\ndef test_it():\n    assert False\n"
    result = run_pytest(tmp_path, source, ci="true")
    assert result.returncode == 0 and "1 xfailed" in result.stdout, result.stdout
