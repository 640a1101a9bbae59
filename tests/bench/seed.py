"""The seed's case as one figure (issue #20, part 4): a company withdraws a whole dataset, 3,000,000
dating-profile photos, and everything derived from it: the face vectors, the feature rows and the models
trained on them. One ``lethe submit --dataset`` request, approved by an admin, run end to end by
``lethe worker -c 2`` on Redis and a PostgreSQL ledger.

- Photos: a stub S3 endpoint that synthesises the listing (``tests.bench.stub_s3``; moto cannot hold 3M
  objects), ``sources/dating-2014/`` beside a kept source ``sources/consented/``. The stub counts how often
  each version was deleted.
- Vectors: a real LanceDB table (100k vectors of 16 dims at scale 1, 9 in 10 from the dataset; purged with
  compaction and cleanup). Feature rows: a real Feast repo (100k offline rows in Parquet, 9 in 10 from the
  dataset, and its SQLite online store). Models: real MLflow (SQLite tracking store, local artifacts), three
  versions trained on the dataset (deleted with their files), one on the kept source.
- Baseline: a raw boto3 ListObjectVersions + DeleteObjects loop over the same prefix on an identical stub,
  in a child process (as the worker is). ``rate_ratio`` = lethe's photo deletes per second in its purge
  task, as the stub saw it (its first listing, the blast-radius count, to its last, verify) / the raw
  loop's; ``delete_phase_ratio`` the same for its first to last DeleteObjects; ``end_to_end_ratio`` the same
  against lethe's wall time from submission to the request completed (the blast-radius counts, the
  approval, the other targets, verify, certificate).
- Resume: a second run SIGKILLs the whole worker (main process and pool) once a third of the photos are
  gone, starts another, and runs ``lethe reconcile`` every second until the request completes (with a
  5 s task lease, so the re-dispatch comes seconds after the kill); the stub then says how many versions
  were deleted more than once (goal: 0). A batch in flight at the kill is never deleted twice: the stub, as
  S3, deletes a DeleteObjects it received whether or not the client reads the answer, and the resumed
  purge lists again, so it never sees those versions. What does re-delete is a second run of the same
  task: the blast-radius count before an approved purge renews no lease, so when it lists longer than the
  lease, reconcile re-sends the task and two purges race over one listing (``extra_delete_calls``).

``--scale`` shrinks photos, vectors and rows alike (0.01 = 30k photos). ``python -m tests.bench.seed
[--scale S]`` prints the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from orchestrator.certificates import create_private_key
from orchestrator.config import Settings
from orchestrator.service import Lethe
from orchestrator.testing import FAKE_AWS_ENV
from tests.bench.orchestration import BIN, BROKER, KEY, Watch
from tests.bench.stores import _in_child
from tests.bench.stub_s3 import StubS3
from tests.fixtures.services import running_process, temporary_database

DATASET = "dating-2014"
KEPT = "consented"
BUCKET = "photos"
PHOTOS = 3_000_000
KEPT_PHOTOS = 1_000
VECTORS = 100_000
FEATURE_ROWS = 100_000
MODELS = 3  # versions trained on the dataset; one more is trained on the kept source
LEASE_SECONDS = 5  # so reconcile re-sends the killed worker's task seconds after the kill, not minutes
KILL_AT = 1 / 3
GOAL = 0.9


def sizes(scale: float) -> dict[str, int]:
    return {"photos": max(3, int(PHOTOS * scale)), "vectors": max(10, int(VECTORS * scale)),
            "feature_rows": max(10, int(FEATURE_ROWS * scale))}


def stub(photos: int) -> StubS3:
    return StubS3({DATASET: photos, KEPT: KEPT_PHOTOS}, bucket=BUCKET, root="sources/")


# -- the baseline --------------------------------------------------------------------------------------------
def raw_delete_loop(endpoint: str) -> float:
    """A hand-written purge of the dataset's photos: list a page, delete it, until the listing ends."""
    os.environ.update(FAKE_AWS_ENV)
    from workers.targets.s3 import s3_client

    client = s3_client(endpoint, None)
    client.list_object_versions(Bucket=BUCKET, Prefix="warm-up/", MaxKeys=1)  # as lethe's worker is warm
    start = time.perf_counter()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=f"sources/{DATASET}/"):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", ())]
        if objects:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": objects, "Quiet": True})
    return time.perf_counter() - start


def bench_raw(photos: int) -> dict[str, Any]:
    server = stub(photos)
    with server as endpoint:
        run = _in_child(raw_delete_loop, endpoint)
        left, again = server.live(DATASET), server.redeleted(DATASET)
    if left or again:
        raise AssertionError(f"the raw loop left {left} photos and deleted {again} twice")
    return {**run, "deletes_per_second": photos / run["seconds"], "stub_requests": dict(server.requests)}


# -- the estate derived from the photos ---------------------------------------------------------------------
def build_vectors(location: Path, rows: int) -> None:
    import lancedb
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(20)
    kept = max(1, rows // 10)
    sources = np.array([DATASET] * (rows - kept) + [KEPT] * kept)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(rows * 16, dtype=np.float32)), 16)
    lancedb.connect(str(location)).create_table("faces", data=pa.table({
        "owner": pa.array([f"u{i}" for i in range(rows)]), "source": pa.array(sources), "vector": vectors}))


def build_features(repo: Path, rows: int) -> None:
    """A Feast repo whose entity is a photo source (join key ``source``): per-day statistics of its photos,
    offline in Parquet (the dataset's rows first, in row groups of 10k) and materialized online."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "seed", "provider": "local", "registry": "registry.db",
        "online_store": {"type": "sqlite", "path": "online_store.db"}, "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3}, sort_keys=False))
    kept = max(1, rows // 10)
    day = datetime(2024, 1, 1, tzinfo=UTC)
    stamps = pa.array([day - timedelta(minutes=i % 500_000) for i in range(rows)], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({
        "source": pa.array([DATASET] * (rows - kept) + [KEPT] * kept),
        "event_timestamp": stamps,
        "photos": pa.array(np.arange(rows, dtype=np.int64)),
        "face_score": pa.array(np.random.default_rng(4).random(rows)),
    }), repo / "data" / "source_stats.parquet", row_group_size=10_000)
    entity = Entity(name="photo_source", join_keys=["source"], value_type=ValueType.STRING)
    view = FeatureView(name="source_stats", entities=[entity], ttl=timedelta(0), online=True,
                       source=FileSource(name="source_stats_source", path="data/source_stats.parquet",
                                         timestamp_field="event_timestamp"),
                       schema=[Field(name="source", dtype=String), Field(name="photos", dtype=Int64),
                               Field(name="face_score", dtype=Float64)])
    store = FeatureStore(repo_path=str(repo))
    store.apply([entity, view])
    store.materialize(day - timedelta(days=400), day + timedelta(days=1))


def build_models(folder: Path) -> str:
    """An MLflow tracking store with MODELS versions of ``face-match`` trained on the dataset and one on the
    kept source, each with a checkpoint on disk. Returns the tracking URI."""
    from workers.targets.mlflow import load_mlflow

    load_mlflow()
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag

    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    weights = folder / "weights"
    weights.mkdir()
    (weights / "weights.bin").write_bytes(os.urandom(4096))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("face-match", artifact_location=str(folder / "artifacts"))
    client.create_registered_model("face-match")
    for i, source in enumerate([DATASET] * MODELS + [KEPT]):
        run_id = client.create_run(experiment).info.run_id
        client.log_inputs(run_id, [DatasetInput(Dataset(name=source, digest=f"d{i}", source_type="local",
                                                        source=f"/data/{source}"),
                                                [InputTag("mlflow.data.context", "training")])])
        client.log_artifacts(run_id, str(weights), "checkpoint")
        client.create_model_version("face-match", source=f"{client.get_run(run_id).info.artifact_uri}/checkpoint",
                                    run_id=run_id)
    return uri


def data_map(endpoint: str, work: Path, tracking_uri: str) -> str:
    return f"""version: 1
identifiers: [user_id, source]
targets:
  - {{name: photos, kind: s3, endpoint_url: "{endpoint}", bucket: {BUCKET}, prefix: "users/{{user_id}}/"}}
  - {{name: faces, kind: lancedb, location: "{work / 'vectors'}", table: faces, match: {{owner: "{{user_id}}"}},
     after: [photos]}}
  - {{name: features, kind: feast, repo_path: "{work / 'features'}", entity: source, value: "{{source}}"}}
  - {{name: face-models, kind: mlflow, tracking_uri: "{tracking_uri}", action: delete,
     after: [photos, faces, features]}}
datasets:
  {DATASET}:
    photos: {{prefix: "sources/{DATASET}/"}}
    faces: {{match: {{source: {DATASET}}}}}
    features: {{value: {DATASET}}}
    face-models: {{dataset_name: {DATASET}}}
"""


# -- lethe ---------------------------------------------------------------------------------------------------
def watch_worker(memory: Watch, pid: int, name: str) -> None:
    """The worker's processes together, and each alone: the main process and every pool process."""
    import psutil

    memory.watch(f"{name} (main + pool)", pid, children=True)
    memory.watch(f"{name} main", pid)
    for i, child in enumerate(psutil.Process(pid).children(recursive=True)):
        memory.watch(f"{name} pool process {i + 1}", child.pid)


def task_seconds(lethe: Lethe, request_id: str) -> dict[str, dict[str, float]]:
    """Per target, when its (last) run started and finished, in seconds after the request was received."""
    from sqlalchemy import text

    with lethe.ledger.engine.connect() as conn:
        received = conn.execute(text("SELECT received_at FROM requests WHERE id = :id"), {"id": request_id}).scalar()
        rows = conn.execute(text("SELECT target, started_at, finished_at FROM tasks WHERE request_id = :id"),
                            {"id": request_id}).all()
    return {target: {"started": round((started - received).total_seconds(), 2),
                     "finished": round((finished - received).total_seconds(), 2)}
            for target, started, finished in rows if started is not None and finished is not None}


def estate_left(work: Path, tracking_uri: str) -> dict[str, Any]:
    """What is left of each store, read with the stores' own clients (independent of lethe's targets)."""
    import lancedb
    import pyarrow.parquet as pq
    from feast import FeatureStore
    from mlflow import MlflowClient

    faces = lancedb.connect(str(work / "vectors")).open_table("faces").to_arrow()
    rows = pq.read_table(work / "features" / "data" / "source_stats.parquet")
    online = FeatureStore(repo_path=str(work / "features")).get_online_features(
        features=["source_stats:photos"], entity_rows=[{"source": DATASET}, {"source": KEPT}]).to_dict()
    versions = MlflowClient(tracking_uri=tracking_uri).search_model_versions("name = 'face-match'")
    return {
        "vectors": sorted(set(faces.column("source").to_pylist())), "vector_rows": faces.num_rows,
        "feature_sources": sorted(set(rows.column("source").to_pylist())), "feature_rows": rows.num_rows,
        "online": dict(zip(online["source"], online["photos"], strict=True)),
        "model_versions": len(versions),
    }


def lethe_run(work: Path, scale: float, kill: bool = False, url: str = BROKER,
              delete_delay: float = 0.0, list_delay: float = 0.0) -> dict[str, Any]:
    """The withdrawal end to end; with ``kill``, the worker is SIGKILLed a third of the way through the
    photos and another one finishes the request."""
    n = sizes(scale)
    work.mkdir(parents=True, exist_ok=True)
    build_vectors(work / "vectors", n["vectors"])
    build_features(work / "features", n["feature_rows"])
    tracking_uri = build_models(work / "mlflow")
    signing = work / "signing.pem"
    create_private_key(signing)
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    server = stub(n["photos"])
    server.delete_delay, server.list_delay = delete_delay, list_delay
    with server as endpoint, temporary_database("lethe_bench") as db, ExitStack() as stack:
        (work / "map.yaml").write_text(data_map(endpoint, work, tracking_uri))
        # Only the run with a kill shortens the lease: it also makes the worker renew it every 0.5 s, not 2 s.
        lease = LEASE_SECONDS if kill else Settings.model_fields["task_lease_seconds"].default
        settings = Settings(broker_url=url, database_url=db, subject_key=KEY, signing_key=signing,
                            data_map=work / "map.yaml", log_level="WARNING", task_lease_seconds=lease)
        lethe = Lethe(settings)
        lethe.migrate()
        env = {**os.environ, **FAKE_AWS_ENV, "LETHE_BROKER_URL": url, "LETHE_DATABASE_URL": db,
               "LETHE_SUBJECT_KEY": KEY, "LETHE_SIGNING_KEY": str(signing), "LETHE_DATA_MAP": str(work / "map.yaml"),
               "LETHE_LOG_LEVEL": "WARNING", "LETHE_TASK_LEASE_SECONDS": str(lease),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
        args = [str(BIN / "lethe"), "worker", "-c", "2", "--loglevel", "WARNING"]
        worker = stack.enter_context(running_process(args, env, work / "worker-1.log"))
        # Warm up as a running worker is: a request for nobody reaches every target once (imports, clients).
        lethe.wait(lethe.submit({"user_id": "warm-up", "source": "warm-up"})[0], timeout=600, interval=0.1)
        memory = stack.enter_context(Watch())
        watch_worker(memory, worker.pid, "worker")
        server.spans.clear()
        start = time.perf_counter()
        request_id, _ = lethe.submit({}, dataset=DATASET)
        status = lethe.wait(request_id, timeout=3600, interval=0.1)
        if status["status"] != "awaiting_approval":
            raise AssertionError(f"a dataset request should wait for an admin: {status['status']}")
        counted = time.perf_counter()
        lethe.approve(request_id, actor="bench:admin")
        killed: dict[str, Any] | None = None
        if kill:
            while server.deleted(DATASET) < n["photos"] * KILL_AT:
                time.sleep(0.01)
            os.killpg(worker.pid, signal.SIGKILL)  # the whole worker, pool included: the host died
            worker.wait()
            killed = {"deleted_before_kill": server.deleted(DATASET),
                      "seconds_into_purge": time.perf_counter() - counted}
            second = stack.enter_context(running_process(args, env, work / "worker-2.log"))
            memory.watch("second worker (main + pool)", second.pid, children=True)  # its pool forks later
            while True:  # what `lethe reconcile` on a schedule does: re-send the task once its lease ran out
                status = lethe.wait(request_id, timeout=1, interval=0.1)
                if status["status"] in ("completed", "failed", "cancelled"):
                    break
                lethe.reconcile()
            killed["redispatched_after_seconds"] = time.perf_counter() - counted - killed["seconds_into_purge"]
        else:
            status = lethe.wait(request_id, timeout=3600, interval=0.1)
        seconds = time.perf_counter() - start
        tasks = {t["target"]: t["deleted"] for t in status["tasks"]}
        attempts = {t["target"]: t["attempts"] for t in status["tasks"]}
        # The photos task as the stub saw it: its first listing (the blast-radius count) to its last (verify);
        # and the delete phase alone, first DeleteObjects to last.
        photos_task = server.spans["ListObjectVersions"][1] - server.spans["ListObjectVersions"][0]
        deletes = server.spans["DeleteObjects"][1] - server.spans["DeleteObjects"][0]
        figures = {
            "status": status["status"], "tasks": tasks, "attempts": attempts, "seconds": seconds,
            "seconds_to_approval": counted - start, "seconds_after_approval": time.perf_counter() - counted,
            "task_seconds": task_seconds(lethe, request_id),
            "photos_task_seconds": photos_task, "delete_phase_seconds": deletes,
            "deletes_per_second": n["photos"] / photos_task if photos_task > 0 else None,
            "delete_phase_deletes_per_second": n["photos"] / deletes if deletes > 0 else None,
            "photos_left": server.live(DATASET), "kept_photos_left": server.live(KEPT),
            "redeleted": server.redeleted(DATASET), "stub_requests": dict(server.requests),
            # DeleteObjects calls more than one pass over the photos needs: batches sent again
            "extra_delete_calls": server.requests["DeleteObjects"] - -(-n["photos"] // 1000),
            "left": estate_left(work, tracking_uri), "ledger_problems": lethe.ledger.verify()[:3],
            "certificate": lethe.ledger.certificate(request_id).get("scope"),
            "killed": killed, **n,
        }
        lethe.ledger.engine.dispose()
    figures["peak_mib"] = {k: round(v, 1) for k, v in memory.peaks.items()}
    return figures


def check(run: dict[str, Any]) -> None:
    """The withdrawal was exact: the dataset's photos, vectors, rows and models gone, the kept source's kept."""
    left = run["left"]
    problems = [
        *([f"status {run['status']}"] if run["status"] != "completed" else []),
        *([f"{run['photos_left']} photos left"] if run["photos_left"] else []),
        *([f"kept photos {run['kept_photos_left']}"] if run["kept_photos_left"] != KEPT_PHOTOS else []),
        *([f"vectors of {left['vectors']}"] if left["vectors"] != [KEPT] else []),
        *([f"feature rows of {left['feature_sources']}"] if left["feature_sources"] != [KEPT] else []),
        *([f"online rows {left['online']}"] if left["online"].get(DATASET) is not None
          or left["online"].get(KEPT) is None else []),
        *([f"{left['model_versions']} model versions"] if left["model_versions"] != 1 else []),
        *([f"ledger: {run['ledger_problems']}"] if run["ledger_problems"] else []),
    ]
    if problems:
        raise AssertionError(f"the dataset withdrawal was not exact: {'; '.join(problems)}")


def bench_seed(workdir: Path, scale: float = 1.0, url: str = BROKER) -> dict[str, Any]:
    """The figure: the raw loop, lethe's withdrawal, and the withdrawal again with a worker killed."""
    n = sizes(scale)
    raw = bench_raw(n["photos"])
    clean = lethe_run(workdir / "clean", scale, url=url)
    check(clean)
    killed = lethe_run(workdir / "killed", scale, kill=True, url=url)
    check(killed)
    worker_peak = max(v for k, v in clean["peak_mib"].items() if k.startswith("worker pool process"))
    return {
        **n, "raw": raw, "lethe": clean, "killed": killed,
        "rate_ratio": clean["deletes_per_second"] / raw["deletes_per_second"],
        "delete_phase_ratio": clean["delete_phase_deletes_per_second"] / raw["deletes_per_second"],
        "end_to_end_ratio": raw["seconds"] / clean["seconds"],
        "worker_peak_mib": worker_peak,  # the largest pool process: one of them purges the photos
        "redeleted_after_kill": killed["redeleted"], "goal": f">= {GOAL}",
        "note": "stub S3 (synthesised listing over HTTP, tests/bench/stub_s3.py); LanceDB, Feast (file offline "
                "store, SQLite online) and MLflow (SQLite store) real; lethe worker -c 2 on Redis + PostgreSQL",
    }


def describe(s: dict[str, Any]) -> str:
    lethe, raw, killed = s["lethe"], s["raw"], s["killed"]
    k = killed["killed"] or {}
    return (f"seed withdrawal: {s['photos']:,} photos + {s['vectors']:,} vectors + {s['feature_rows']:,} feature "
            f"rows + {MODELS} models: lethe {lethe['seconds']:.1f} s end to end ({lethe['seconds_to_approval']:.1f} s "
            f"to the approval prompt), photos task (count, purge, verify) {lethe['deletes_per_second']:,.0f} "
            f"deletes/s vs a raw List+DeleteObjects loop {raw['deletes_per_second']:,.0f}/s -> {s['rate_ratio']:.2f}x "
            f"(goal >= {GOAL}x; delete phase alone {s['delete_phase_ratio']:.2f}x, end to end "
            f"{s['end_to_end_ratio']:.2f}x); peak RSS of a worker process {s['worker_peak_mib']:,.0f} MiB "
            f"(all of the worker {lethe['peak_mib']['worker (main + pool)']:,.0f} MiB)\n"
            f"  worker SIGKILLed after {k.get('deleted_before_kill', 0):,} photos, another finished it "
            f"({killed['status']}, {killed['seconds']:.1f} s, photos task attempts {killed['attempts']['photos']}): "
            f"{killed['redeleted']:,} photos deleted twice ({killed['extra_delete_calls']} DeleteObjects beyond one "
            f"pass), {killed['photos_left']} left")


def main() -> None:
    from orchestrator import logs

    parser = argparse.ArgumentParser(prog="python -m tests.bench.seed")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logs.configure(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        figures = bench_seed(Path(tmp), args.scale)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    print(describe(figures))


if __name__ == "__main__":
    main()
