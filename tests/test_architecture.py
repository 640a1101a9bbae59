"""Who may import whom (docs/architecture.md), as import-linter contracts in pyproject.toml: the adapters
reach no door, the API and the CLI stay independent, the domain reaches no door. Indirect imports count,
and imports inside functions too (an adapter's lazy engine import is still an import)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("contract", [c["id"] for c in CONTRACTS])
def test_import_contract_is_kept(contract: str) -> None:
    """Each contract of [tool.importlinter] holds; the output names the chain that breaks one."""
    result = lint_imports("--contract", contract)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    """The contracts have teeth: a rule the code does not keep (the CLI importing nothing from the API)
    is reported broken, naming the import."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["orchestrator", "workers"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "cli without api"\ntype = "forbidden"\n'
                      'source_modules = ["orchestrator.cli"]\nforbidden_modules = ["orchestrator.api"]\n')
    result = lint_imports(str(config))
    assert result.returncode != 0 and "1 broken" in result.stdout, result.stdout
    assert "orchestrator.api" in result.stdout


def test_ledger_imports_nothing_from_workers() -> None:
    """The ledger, the source of truth, does not depend on the adapters (issue 21 item 1)."""
    graph = grimp.build_graph("orchestrator", "workers")
    chains = graph.find_shortest_chains(importer="orchestrator.ledger", imported="workers", as_packages=True)
    assert not chains, sorted(chains)
