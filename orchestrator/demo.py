"""``lethe demo``: a synthetic estate on embedded stores, erased through the real pipeline.

Stores: a versioned S3 photo bucket on moto's server (photos with old versions, some delete markers), a Feast
feature repo (SQLite online store, Parquet offline files), a Delta training manifest of the photos with the
demographic columns (age, gender, location; several versions), the application's users table (SQLite,
masked), a LanceDB face-embedding table, an in-memory
session store, and an MLflow registry with models trained on two halves of the users (recorded with lethe's
lineage) and one trained on consented data only. Broker and worker run in-process; the ledger is SQLite.
Every erased user must be gone from every store, and every other user intact, as read back through each
target's own count; the models trained on an erased user are quarantined and the other one keeps serving.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import logs
from orchestrator.config import Settings
from orchestrator.identifiers import Subject, keyed_hash
from orchestrator.service import Lethe
from orchestrator.testing import make_bucket, put_objects, s3_server
from workers.targets.base import TaskContext, build_target
from workers.targets.memory import MemoryStore

BUCKET = "demo-photos"
DATA_MAP = """\
version: 1
identifiers:
  user_id: "[0-9]{{1,12}}"
targets:
  - name: profile-photos
    kind: s3
    endpoint_url: {endpoint}
    bucket: {bucket}
    prefix: "users/{{user_id}}/"
  - name: user-features
    kind: feast
    repo_path: {feature_repo}
    entity: user_id
  - name: face-embeddings
    kind: lancedb
    location: {vectors}
    table: faces
    match: {{owner: "{{user_id}}"}}
    after: [profile-photos]
  - name: training-manifest
    kind: delta
    uri: {manifest}
    where: {{user_id: "{{user_id}}"}}
    after: [profile-photos]
  - name: app-users
    kind: sql
    url: {users_url}
    table: users
    where: {{id: "{{user_id}}"}}
    action: mask
    mask: {{email: null, display_name: "erased", age: null, gender: null, location: null}}
    after: [training-manifest]
  - name: sessions
    kind: memory
    store: demo-sessions
    match: {{owner: "{{user_id}}"}}
    after: [profile-photos]
  - name: face-models
    kind: mlflow
    tracking_uri: {tracking_uri}
    action: quarantine
    after: [profile-photos, face-embeddings]
stores:
  - {{name: billing-archive, not_erased: "kept 10 years by tax law (Art. 17(3)(b))"}}
"""


def pick_subjects(subjects: int, erase: int, seed: int = 7) -> list[str]:
    """Erase user 12 whenever user 123 exists too, to show a prefix never reaches past its separator."""
    chosen = ["12"] if subjects > 123 else []
    rest = [str(i) for i in random.Random(seed).sample(range(1, subjects + 1), subjects) if str(i) not in chosen]
    return (chosen + rest)[:erase]


def seed_faces(location: Path, users: list[str]) -> None:
    """Two 8-dimensional face embeddings per user in a LanceDB table."""
    import lancedb
    import pyarrow as pa

    rng = random.Random(11)
    rows = [{"owner": u, "photo": p, "vector": [rng.random() for _ in range(8)]} for u in users for p in (1, 2)]
    schema = pa.schema([("owner", pa.string()), ("photo", pa.int64()), ("vector", pa.list_(pa.float32(), 8))])
    lancedb.connect(str(location)).create_table("faces", data=pa.Table.from_pylist(rows, schema=schema))


MODELS = {"face-recognizer": "faces-a", "age-estimator": "faces-b", "face-detector": "faces-consented"}


def seed_models(workdir: Path, users: list[str]) -> tuple[str, dict[str, list[str]]]:
    """Three registered models, each trained on one dataset and serving under the alias "production".
    Returns the tracking URI and each dataset's members (recorded in lethe's lineage by the caller)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from workers.targets.mlflow import load_mlflow

    mlflow = load_mlflow()
    uri = f"sqlite:///{workdir / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    weights = workdir / "weights"
    weights.mkdir()
    (weights / "model.bin").write_bytes(random.Random(5).randbytes(256))
    experiment = client.create_experiment("faces", artifact_location=str(workdir / "mlartifacts"))
    half = len(users) // 2
    members = {"faces-a": users[:half], "faces-b": users[half:],
               "faces-consented": [str(100_000 + i) for i in range(50)]}
    for model, dataset in MODELS.items():
        run_id = client.create_run(experiment).info.run_id
        client.log_inputs(run_id, [DatasetInput(Dataset(name=dataset, digest="v1", source_type="local",
                                                        source=f"/data/{dataset}"),
                                                [InputTag("mlflow.data.context", "training")])])
        client.log_artifacts(run_id, str(weights), "model")
        client.create_registered_model(model)
        version = client.create_model_version(model, source=f"runs:/{run_id}/model", run_id=run_id).version
        client.set_registered_model_alias(model, "production", str(version))
    return uri, members


def serving(tracking_uri: str) -> set[str]:
    """Registered models that still serve under an alias."""
    from workers.targets.mlflow import mlflow_client

    client = mlflow_client(tracking_uri, None)
    return {m for m in MODELS if client.get_registered_model(m).aliases}


def quiet_stores() -> None:
    """The demo prints its own story: the stores' libraries log nothing below an error (Feast's registry,
    MLflow's and Alembic's migrations, LanceDB), MLflow sends no telemetry, and their deprecation warnings
    stay out of the summary."""
    import warnings

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow sets its loggers' level when imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logs.configure(level="WARNING")
    for name in ("feast", "mlflow", "alembic", "lancedb", "botocore", "werkzeug", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def run_demo(subjects: int, erase: int, workdir: Path, console: Console) -> int:
    from orchestrator.demo_estate import build_demo_repo, build_training_manifest, build_users_table

    quiet_stores()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    users = [str(i) for i in range(1, subjects + 1)]
    doomed = pick_subjects(subjects, erase)
    # Every erased user, and a sample of the others (all look-alikes of the erased ids among them).
    kept = [u for u in users if u not in doomed]
    look_alikes = {u for u in kept if any(u.startswith(d) or d.startswith(u) for d in doomed)}
    kept_sample = sorted(look_alikes | set(random.Random(3).sample(kept, min(20, len(kept)))))
    with s3_server() as endpoint:
        console.print(f"seeding {subjects} users: photos (2 versions each, some deleted), features, a training "
                      "manifest, the users table, face embeddings, sessions and three models")
        make_bucket(endpoint, BUCKET)
        put_objects(endpoint, BUCKET, [f"users/{u}/photo-{p}.jpg" for u in users for p in (1, 2)], versions=2)
        put_objects(endpoint, BUCKET, [f"users/{u}/old-avatar.jpg" for u in users[::3]], delete_marker=True)
        with contextlib.redirect_stdout(io.StringIO()):  # Feast prints its materialisation (colour codes too)
            build_demo_repo(workdir / "feature_repo", users)
        build_training_manifest(workdir / "lake" / "faces_manifest", users)
        users_url = build_users_table(workdir / "app.db", users)
        seed_faces(workdir / "vectors", users)
        tracking_uri, members = seed_models(workdir, users)
        MemoryStore.clear()
        MemoryStore.add("demo-sessions", *({"owner": u, "session": s} for u in users for s in range(2)))

        map_path = workdir / "datamap.yaml"
        map_path.write_text(DATA_MAP.format(endpoint=endpoint, bucket=BUCKET, feature_repo=workdir / "feature_repo",
                                            manifest=workdir / "lake" / "faces_manifest", users_url=users_url,
                                            vectors=workdir / "vectors", tracking_uri=tracking_uri))
        lethe = Lethe(Settings(database_url=f"sqlite:///{workdir / 'lethe.db'}", data_map=map_path, broker_url=None))
        key = lethe.settings.subject_key_bytes
        for dataset, ids in members.items():
            lethe.ledger.record_lineage(dataset, "v1", (keyed_hash(key, "user_id", u) for u in ids), actor="demo")
        configs = {t.name: t for t in lethe.load_map().targets}

        def count(name: str, user: str) -> int:
            subject = Subject({"user_id": user})
            hashes = subject.hashes(key)
            context = TaskContext("demo-count", hashes, lethe.ledger.datasets_for(hashes.values()))
            return build_target(configs[name], context).count(subject)

        def counts() -> dict[str, dict[str, int]]:
            return {name: {u: count(name, u) for u in [*doomed, *kept_sample]} for name in configs}

        serving_before = serving(tracking_uri)

        before = counts()
        statuses: list[dict[str, Any]] = []
        with lethe.embedded_worker(), Progress(
            TextColumn("erasing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            ids = [lethe.submit({"user_id": u}, actor="demo")[0] for u in doomed]
            bar = progress.add_task("erasing", total=len(ids))
            for request_id in ids:
                statuses.append(lethe.wait(request_id, timeout=300))
                progress.advance(bar)
        after = counts()
        serving_after = serving(tracking_uri)

        certs = workdir / "certificates"
        certs.mkdir()
        for status in statuses:
            if status["status"] == "completed":
                cert = lethe.ledger.certificate(status["id"])
                (certs / f"{status['id']}.json").write_text(json.dumps(cert, indent=2, sort_keys=True) + "\n")
        (workdir / "lethe-public.pem").write_text(lethe.ledger.public_key_pem())
        ledger_problems = lethe.ledger.verify()

    completed = sum(1 for s in statuses if s["status"] == "completed")
    table = Table(title=f"lethe demo: {len(doomed)} of {subjects} users erased", title_justify="left",
                  caption=f"deleted: items the target removed · residue: what a read-back still finds of the "
                  f"erased users (must be 0) · others changed: of the {len(kept_sample)} users kept and read back "
                  f"before and after (every look-alike id of an erased one among them), how many changed (must be "
                  f"0); for models, of those trained on no erased user, how many stopped serving",
                  caption_justify="left")
    for col in ("target", "kind", "deleted", "residue", "others changed", "level"):
        table.add_column(col, no_wrap=col != "level")
    ok = completed == len(doomed) and not ledger_problems
    # Models are shared: one trained on an erased user is withdrawn for everyone, so for them "others" means
    # the models trained on no erased user, which must still serve.
    hit = {m for m, dataset in MODELS.items() if set(members[dataset]) & set(doomed)}
    for name, config in configs.items():
        deleted = sum(t["deleted"] or 0 for s in statuses for t in s["tasks"] if t["target"] == name)
        residue = sum(after[name][u] for u in doomed)
        if config.kind == "mlflow":
            spared = serving_before - hit
            changed_text = f"{len(spared - serving_after)}/{len(spared)} models"
            ok = ok and residue == 0 and serving_after == spared and serving_before == set(MODELS)
        else:
            changed = sum(1 for u in kept_sample if after[name][u] != before[name][u])
            changed_text = f"{changed}/{len(kept_sample)}"
            ok = ok and residue == 0 and changed == 0 and all(before[name][u] for u in doomed)
        levels = {t["level"] for s in statuses for t in s["tasks"] if t["target"] == name}
        table.add_row(name, config.kind, str(deleted), str(residue), changed_text,
                      ", ".join(sorted(str(level) for level in levels)))
    console.print(table)
    console.print(f"models quarantined: {', '.join(sorted(hit)) or 'none'}; still serving: "
                  f"{', '.join(sorted(serving_after)) or 'none'}")
    console.print(f"requests completed: {completed}/{len(doomed)} · erased ids (shown only in this demo): "
                  f"{', '.join(doomed)}")
    console.print(f"ledger: {workdir / 'lethe.db'} ({'verified' if not ledger_problems else ledger_problems[0]})")
    console.print(f"certificates: {certs}/<request id>.json · public key: {workdir / 'lethe-public.pem'}")
    console.print(f"finished in {time.monotonic() - started:.1f} s (seeding, erasing, reading back every store)")
    console.print("[green]every erased user is gone from every store and everyone else is intact[/green]" if ok
                  else "[red]demo failed: see the table above[/red]")
    return 0 if ok else 1
