"""The wheel as a user installs it: the core alone, then `lethe[s3]`, in a fresh virtualenv.

The core installs the orchestrator without any store's client; each store comes with its extra, and a map
naming a kind whose extra is missing is refused when it loads, with the command that installs it. The
packages are installed with a normal `pip install` from the configured index, so this takes about a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

pytestmark = pytest.mark.integration

MAPS = {
    "memory": "  - {name: sessions, kind: memory, store: sessions, match: {user_id: '{user_id}'}}\n",
    "s3": "  - {name: photos, kind: s3, bucket: photos, prefix: 'users/{user_id}/'}\n",
    "feast": "  - {name: features, kind: feast, repo_path: ./repo, entity: user_id, feature_views: [stats]}\n",
}


def write_map(directory: Path, kind: str) -> Path:
    path = directory / f"{kind}.yaml"
    path.write_text("version: 1\nidentifiers: {user_id: '[0-9]+'}\ntargets:\n" + MAPS[kind])
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lethe's wheel, built from a copy of what the wheel is made of (the working tree gets no build/)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("orchestrator", "workers"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(work / "dist"),
                    str(source)], check=True, capture_output=True)
    (built,) = (work / "dist").glob("lethe-*.whl")
    return built


class Venv:
    """A fresh virtualenv without pip of its own: the suite's pip installs into it (`pip --python`)."""

    def __init__(self, path: Path):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
        self.bin = path / "bin"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("LETHE_", "VIRTUAL_ENV", "PYTHON"))}
        self.env["PATH"] = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"

    def install(self, requirement: str) -> None:
        # --no-compile: byte-compiling every dependency is most of an install's time, and this venv is thrown away
        subprocess.run([sys.executable, "-m", "pip", "--python", str(self.bin / "python"), "install", "--quiet",
                        "--no-compile", requirement], check=True, capture_output=True, env=self.env)

    def lethe(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, LETHE_DATABASE_URL=f"sqlite:///{cwd / 'ledger.db'}")
        return subprocess.run([str(self.bin / "lethe"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120)

    def imported_after(self, statement: str) -> set[str]:
        code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
        result = subprocess.run([str(self.bin / "python"), "-c", code], env=self.env, capture_output=True,
                                text=True, check=True)
        return set(result.stdout.split())


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    yield Venv(tmp_path_factory.mktemp("venv") / "env")


def test_wheel_carries_templates_static_files_and_migrations(wheel: Path) -> None:
    """Every file of the packages is in the wheel: the modules, the dashboard's templates and static files,
    and every ledger migration with Alembic's environment and script template."""
    names = set(zipfile.ZipFile(wheel).namelist())
    files = {p.relative_to(ROOT).as_posix() for package in ("orchestrator", "workers")
             for p in (ROOT / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert any(f.startswith("orchestrator/api/templates/") for f in files)
    assert any(f.startswith("orchestrator/ledger/migrations/versions/") for f in files)
    assert "orchestrator/ledger/migrations/script.py.mako" in files
    assert not files - names, sorted(files - names)


def test_core_then_s3_extra_in_a_fresh_venv(wheel: Path, venv: Venv, tmp_path: Path) -> None:
    """The core alone runs the CLI, migrates a ledger and loads a memory map, without boto3; `lethe demo` asks
    for `lethe[demo]` and an S3 map for `lethe[s3]`. With `lethe[s3]` the S3 map loads, and a Feast map asks
    for `lethe[feast]`, in one line."""
    venv.install(str(wheel))
    core = "import orchestrator.cli, orchestrator.api, orchestrator.intake, orchestrator.service, workers.app"
    assert not {"boto3", "botocore"} & venv.imported_after(core)
    assert venv.lethe("check-map", str(write_map(tmp_path, "memory")), cwd=tmp_path).returncode == 0
    listed = venv.lethe("list", "--json", cwd=tmp_path)  # migrations run from the installed wheel
    assert listed.returncode == 0, listed.stderr
    demo = venv.lethe("demo", cwd=tmp_path)
    assert demo.returncode == 2 and "pip install 'lethe[demo]'" in demo.stderr, demo.stderr
    s3_map = write_map(tmp_path, "s3")
    refused = venv.lethe("check-map", str(s3_map), cwd=tmp_path)
    assert refused.returncode == 2 and "pip install 'lethe[s3]'" in refused.stderr, refused.stderr

    venv.install(f"lethe[s3] @ {wheel.as_uri()}")
    checked = venv.lethe("check-map", str(s3_map), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    feast = venv.lethe("check-map", str(write_map(tmp_path, "feast")), cwd=tmp_path)
    assert feast.returncode == 2, feast.stderr
    hint = [line for line in feast.stderr.splitlines() if "lethe[feast]" in line]
    assert hint and "pip install 'lethe[feast]'" in hint[0], feast.stderr
    assert "Traceback" not in feast.stderr


def test_every_builtin_kind_names_an_extra_that_exists() -> None:
    """The registry's kind -> extra table names only extras pyproject.toml defines, `all` holds every one of
    them, and the core's dependencies carry no store client."""
    from workers.targets.base import BUILTIN_TARGETS, EXTRAS

    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {extra for extra, _ in EXTRAS.values()} <= set(extras)
    assert set(EXTRAS) <= set(BUILTIN_TARGETS) | {"sql", "delta", "iceberg", "parquet"}
    in_all = extras["all"][0].partition("[")[2].rstrip("]").split(",")
    assert {extra for extra, _ in EXTRAS.values()} | {"demo"} <= set(in_all)
    core = " ".join(PYPROJECT["project"]["dependencies"])
    for client in ("boto3", "feast", "qdrant", "lancedb", "mlflow", "deltalake", "pyiceberg", "pyarrow", "moto"):
        assert client not in core, client


def test_missing_extra_is_refused_when_the_map_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A kind whose engine is not importable fails the map's load with the pip command, and nothing of the
    adapter is imported."""
    import importlib.util

    from orchestrator.datamap import DataMap, DataMapError
    from workers.targets import base

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "qdrant_client" else real_find_spec(name, *a))
    monkeypatch.setattr(base, "_loaded", {})
    path = tmp_path / "map.yaml"
    path.write_text("version: 1\nidentifiers: [user_id]\ntargets:\n"
                    "  - {name: faces, kind: qdrant, location: ./v, collection: faces, match: {uid: '{user_id}'}}\n")
    with pytest.raises(DataMapError, match=r"pip install 'lethe\[qdrant\]'"):
        DataMap.load(path)
