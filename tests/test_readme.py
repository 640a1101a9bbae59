"""Every command in the README works as written: its shell blocks run, in order, in one bash session against
real parts (a temporary PostgreSQL ledger, the machine's Redis, moto's S3 server over HTTP, a real `lethe
worker`, `lethe intake` and `lethe api` on a free port), followed by its Python blocks (publish a signed
event; check a certificate offline), and its data maps load.

The README names production hosts. The test rewrites them with these substitutions and no other; each must
occur in the README, so a changed README cannot silently stop being tested:

| README says | the test uses |
|---|---|
| `postgresql://lethe@db/lethe` | a temporary PostgreSQL database (the ledger) |
| `postgresql://app@db/app` | a temporary PostgreSQL database with an `uploads (owner_id, object_key)` table |
| `redis://127.0.0.1:6379/0` | the suite's Redis database (`LETHE_TEST_REDIS`) |
| `http://127.0.0.1:9000` | a moto S3 server on a free port |
| `localhost:8000`, `--port 8000` | a free port on 127.0.0.1 |
| `<LETHE_EVENT_KEY>` (Python) | the key the shell session exported |

The harness adds `set -euo pipefail` and a trace prompt with the elapsed seconds before the shell blocks
(bash -x: a failure shows which command, and when), and one line after them, `env > session.env`, to run
the Python blocks in the session's environment; the session's background jobs (`&`) are stopped when the
test ends. Not run:
the first block (`make demo`, `make test`), which is what CI runs and which runs this test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from orchestrator.testing import FAKE_AWS_ENV, make_bucket, put_objects, s3_server, version_keys
from tests.fixtures.services import REDIS_URL, temporary_database

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
NOT_RUN = {"make demo": "what CI runs (make test runs this test)"}

pytestmark = pytest.mark.integration


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.M | re.S)


def shell_blocks() -> list[str]:
    return [b for b in blocks("sh") if not any(b.startswith(skip) for skip in NOT_RUN)]


def substitute(source: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        source = source.replace(old, new)
    return source


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


class Estate:
    """The stores the README's data map names, seeded for the subjects its commands erase and for others
    that must stay."""

    ERASED = ("12", "13", "14", "16", "17")  # --subject, --subjects-file, curl, the published event
    KEPT = ("123", "15", "99")               # a look-alike prefix, a held-then-released subject, a stranger

    def __init__(self, endpoint: str, app_url: str):
        self.endpoint = endpoint
        for name in ("photos", "uploads"):
            make_bucket(endpoint, name, versioned=True)
        put_objects(endpoint, "photos", [f"users/{u}/{n}.jpg" for u in self.ERASED + self.KEPT for n in (1, 2)],
                    versions=2)
        put_objects(endpoint, "photos", ["sources/okcupid-2014/1.jpg", "sources/okcupid-2014/2.jpg",
                                         "sources/other-2015/1.jpg"])
        put_objects(endpoint, "uploads", [f"u-{u}.bin" for u in self.ERASED + self.KEPT])
        engine = create_engine(app_url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE uploads (owner_id text NOT NULL, object_key text NOT NULL)"))
            conn.execute(text("INSERT INTO uploads VALUES (:o, :k)"),
                         [{"o": u, "k": f"u-{u}.bin"} for u in self.ERASED + self.KEPT])
        engine.dispose()

    def photos(self, prefix: str) -> list[str]:
        return version_keys(self.endpoint, "photos", prefix)

    def upload(self, owner: str) -> list[str]:
        return version_keys(self.endpoint, "uploads", f"u-{owner}.bin")


@pytest.fixture
def session_dir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Estate]]:
    """An empty directory with the README's data map, the substitutions, and the seeded estate."""
    port = free_port()
    with s3_server() as endpoint, temporary_database("lethe_readme") as ledger_url, \
            temporary_database("lethe_readme_app") as app_url:
        redis.Redis.from_url(REDIS_URL).flushdb()
        estate = Estate(endpoint, app_url)
        substitutions = {
            "postgresql://lethe@db/lethe": ledger_url,
            "postgresql://app@db/app": app_url,
            "redis://127.0.0.1:6379/0": REDIS_URL,
            "http://127.0.0.1:9000": endpoint,
            "localhost:8000": f"127.0.0.1:{port}",
            "--port 8000": f"--port {port}",
        }
        maps = [b for b in blocks("yaml") if "profile-photos" in b]
        assert maps, "the README's minimal data map (profile-photos) is gone"
        (tmp_path / "datamap.yaml").write_text(substitute(maps[0], substitutions))
        yield tmp_path, substitutions, estate
        redis.Redis.from_url(REDIS_URL).flushdb()


def session_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETHE_", "AWS_"))}
    env.update(FAKE_AWS_ENV, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def test_every_substitution_is_in_the_readme() -> None:
    """The listed substitutions all apply: the README still names what the test rewrites."""
    for needle in ("postgresql://lethe@db/lethe", "postgresql://app@db/app", "redis://127.0.0.1:6379/0",
                   "http://127.0.0.1:9000", "localhost:8000", "--port 8000", "<LETHE_EVENT_KEY>"):
        assert needle in README, needle
    assert len(shell_blocks()) >= 2 and blocks("python"), "the README lost its Use or API blocks"


def test_readme_commands_work_as_written(session_dir: tuple[Path, dict[str, str], Estate]) -> None:
    """The Use and API blocks run start to end (bash -e: any failing command fails the test), then the
    published event is filed and the certificate checks offline. The subjects they name are erased from
    every store, every other subject's data is intact, and the dataset request erases only its source."""
    cwd, substitutions, estate = session_dir
    script = "PS4='+ ${SECONDS}s '\nset -euo pipefail\n" + "\n".join(substitute(b, substitutions)
                                                                for b in shell_blocks())
    script += "\nenv > session.env\n"
    (cwd / "readme.sh").write_text(script)
    log = cwd / "readme.log"  # a file, not a pipe: the background jobs keep their output open
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-x", "readme.sh"], cwd=cwd, env=session_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.wait(timeout=300) == 0, log.read_text()[-6000:]
        env = dict(line.split("=", 1) for line in (cwd / "session.env").read_text().splitlines() if "=" in line)

        publish, check = blocks("python")[0], blocks("python")[-1]
        assert "publish_erasure_request" in publish and "verify(signature, body)" in check
        publish = substitute(publish, {**substitutions, "<LETHE_EVENT_KEY>": env["LETHE_EVENT_KEY"]})
        for source in (publish, check):
            result = subprocess.run([sys.executable, "-c", source], cwd=cwd, env=env, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, source + result.stderr

        def erased() -> bool:
            return not any(estate.photos(f"users/{u}/") or estate.upload(u) for u in Estate.ERASED) \
                and not estate.photos("sources/okcupid-2014/")

        wait_until(erased, "the README's requests, the event's and the approved dataset to be erased")
        for kept in Estate.KEPT:
            assert len(estate.photos(f"users/{kept}/")) == 4 and estate.upload(kept), kept
        assert len(estate.photos("sources/other-2015/")) == 1

        listed = subprocess.run(["lethe", "list", "--json"], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=60)
        assert listed.returncode == 0, listed.stderr
        statuses = [item["status"] for item in json.loads(listed.stdout)["items"]]
        assert len(statuses) == 6 and set(statuses) == {"completed"}, statuses  # 12, 13, 14, dataset, 16, 17
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the session's background jobs (worker, reconcile, intake, api): SIGTERM to its process group,
    SIGKILL to what is left after 30 s."""
    def signal_group(sig: int) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except ProcessLookupError:
            return False

    signal_group(signal.SIGTERM)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while signal_group(0) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_group(signal.SIGKILL)


def test_readme_data_maps_load(tmp_path: Path) -> None:
    """Every data map in the README passes `lethe check-map` (every extra is installed in the suite)."""
    maps = blocks("yaml")
    assert len(maps) >= 2
    for i, source in enumerate(maps):
        path = tmp_path / f"map{i}.yaml"
        path.write_text(source)
        result = subprocess.run(["lethe", "check-map", str(path)], cwd=tmp_path, env=session_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, source + result.stderr


def test_data_map_reference_examples_load(tmp_path: Path) -> None:
    """docs/data-map.md's example of each kind is a valid target: each loads in a map of its own (its
    `after:` names targets of other examples, so it is dropped)."""
    from orchestrator.datamap import DataMap

    reference = (ROOT / "docs" / "data-map.md").read_text()
    examples = [b for b in re.findall(r"^```yaml\n(.*?)^```", reference, flags=re.M | re.S)
                if b.startswith("  - name:")]
    kinds = set()
    for i, example in enumerate(examples):
        path = tmp_path / f"example{i}.yaml"
        path.write_text("version: 1\nidentifiers: [user_id, email]\ntargets:\n"
                        + re.sub(r"^    after: .*\n", "", example, flags=re.M))
        kinds |= {t.kind for t in DataMap.load(path).targets}
    assert kinds >= {"s3", "feast", "qdrant", "lancedb", "mlflow", "sql", "delta", "iceberg", "parquet", "memory"}
