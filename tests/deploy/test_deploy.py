"""The deployment files stay valid and in step with the code: Compose against the Compose Specification's
JSON schema, the Helm chart rendered by Helm itself and checked against Kubernetes' schemas, the Dockerfile
parsed. Every command they run must exist in the CLI, every LETHE_* variable they set must be a setting, and
every queue lethe knows must have a worker. No network, no Docker, no cluster.

Tools, all from PyPI (the `test` extra):
- check-jsonschema ships the Compose Specification schema (compose-spec/compose-spec, Apache-2.0) among its
  vendored schemas; it is read as a file, check-jsonschema itself is not run.
- helm-python-sdk embeds Helm's own Go SDK (v4) as a shared library: `Chart.render` is `helm template`,
  `lint` is `helm lint`, sprig functions included.
- kubernetes-validate ships the Kubernetes OpenAPI schemas as JSON schemas (strict: no unknown fields).
- dockerfile-parse parses the Dockerfile (stages, instructions, ARG substitution in FROM).
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from dockerfile_parse import DockerfileParser

from orchestrator.cli import app as cli_app
from orchestrator.config import Settings
from orchestrator.datamap import DataMap
from workers.app import CONTROL_QUEUE, purge_queues

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
CHART = DEPLOY / "helm" / "lethe"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# Queues deployed ahead of their target kind: the MLflow target is being written. Anything else in the files
# that is not a queue lethe knows is a typo.
UPCOMING_QUEUES = {"purge.mlflow"}
# Kubernetes versions the rendered chart must be valid for: the oldest and newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.30", kubernetes_validate.latest_version()]

# Values a filled-in .env would hold (init-secrets.sh writes real ones).
ENV_SECRETS = {
    "LETHE_SUBJECT_KEY": "ab" * 32,
    "LETHE_EVENT_KEY": "cd" * 32,
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "MINIO_ROOT_PASSWORD": "fedcba9876543210",
    "FLOWER_BASIC_AUTH": "admin:0123456789",
}


# -- helpers ---------------------------------------------------------------------------------------------------
def setting_names() -> set[str]:
    """Every LETHE_* variable the settings read."""
    return {f"LETHE_{name.upper()}" for name in Settings.model_fields}


def cli_commands() -> dict[str, Any]:
    """The CLI's commands, as the (click) commands typer builds from orchestrator.cli."""
    commands: dict[str, Any] = typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    return commands


def check_cli(argv: list[str]) -> str:
    """Fail unless argv is `lethe <command> [options]` that lethe's CLI parses; returns the command."""
    assert argv[0] == "lethe", argv
    assert "lethe" in PYPROJECT["project"]["scripts"], "the image runs the `lethe` console script"
    commands = cli_commands()
    assert len(argv) > 1 and argv[1] in commands, f"{argv}: no such lethe command"
    try:  # parses and type-checks every option (ranges included) without running the command
        commands[argv[1]].make_context(f"lethe {argv[1]}", list(argv[2:]))
    except Exception as exc:  # click's UsageError (typer vendors click)
        pytest.fail(f"{shlex.join(argv)}: {getattr(exc, 'format_message', exc.__str__)()}")
    return argv[1]


def example_env() -> dict[str, str]:
    """deploy/.env.example as Compose would read it, with its empty secrets filled in."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    for key, value in ENV_SECRETS.items():
        assert key in env and env[key] == "", f"{key} must be an empty placeholder in .env.example"
        env[key] = value
    return env


INNER_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^${}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (`${V}`, `${V:-default}`, `${V:?error}`, nested, `$$`)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value
    text = value.replace("$$", "\0")

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op and op.endswith("-") and unset:
            return arg
        if op and op.endswith("?") and unset:
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        return current or ""

    while (replaced := INNER_VARIABLE.sub(one, text)) != text:  # innermost first: defaults may nest
        text = replaced
    assert "${" not in text, f"unresolved interpolation in {value!r}"
    return text.replace("\0", "$")


def referenced_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text.replace("$$", "")))


def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The Compose file after interpolation with .env.example: what `docker compose config` would see."""
    return interpolate(compose_raw(), example_env())


def lethe_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the lethe image."""
    return {name: svc for name, svc in doc["services"].items() if "build" in svc}


def worker_queue(argv: list[str]) -> str:
    assert argv[:2] == ["lethe", "worker"], argv
    queues = argv[argv.index("-Q") + 1].split(",")
    assert len(queues) == 1, f"{argv}: a worker consumes one queue, so each queue scales on its own"
    return queues[0]


def check_queues(queues: set[str], where: str) -> None:
    missing = {*purge_queues(), CONTROL_QUEUE} - queues
    assert not missing, f"{where}: no worker for {sorted(missing)}"
    unknown = queues - {*purge_queues(), CONTROL_QUEUE} - UPCOMING_QUEUES
    assert not unknown, f"{where}: workers for queues lethe does not know: {sorted(unknown)}"


def compose_validator() -> jsonschema.protocols.Validator:
    """A validator for the Compose Specification schema, of the JSON Schema draft it declares (2020-12)."""
    files = importlib.metadata.files("check-jsonschema") or []
    path = next(f for f in files if f.name == "compose-spec.json")
    schema = json.loads(Path(str(path.locate())).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# -- Compose ---------------------------------------------------------------------------------------------------
def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    """The interpolated Compose file is valid against the Compose Specification's JSON schema."""
    errors = sorted(compose_validator().iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_compose_schema_check_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    """The schema check has teeth: a misspelt key and a bad depends_on condition are caught."""
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["healthcheck_"] = {}
    broken["services"]["intake"]["depends_on"]["migrate"]["condition"] = "service_done"
    messages = " ".join(e.message for e in compose_validator().iter_errors(broken))
    assert "healthcheck_" in messages and "service_done" in messages, messages


def test_compose_needs_no_variable_that_env_example_does_not_document() -> None:
    """Every ${VAR} the Compose file interpolates is documented in .env.example (set or commented out)."""
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    missing = referenced_variables(COMPOSE_FILE.read_text()) - documented
    assert not missing, f"document {sorted(missing)} in deploy/.env.example"


def test_env_example_documents_every_lethe_setting() -> None:
    """.env.example names every LETHE_* variable of the settings, and no other."""
    documented = set(re.findall(r"^#?\s*(LETHE_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert documented == setting_names()


def test_env_example_holds_no_secret() -> None:
    """Secrets are empty placeholders (init-secrets.sh fills them in deploy/.env), never real values."""
    example_env()  # asserts each secret is an empty placeholder
    assert "BEGIN PRIVATE KEY" not in ENV_EXAMPLE.read_text()


def test_compose_sets_every_setting_and_only_settings(compose: dict[str, Any]) -> None:
    """Every lethe container gets every LETHE_* setting, and no LETHE_* variable lethe does not read."""
    for name, svc in lethe_services(compose).items():
        lethe_vars = {k for k in svc["environment"] if k.startswith("LETHE_")}
        assert lethe_vars == setting_names(), name
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        unknown = {k for k in env if k.startswith("LETHE_")} - setting_names()
        assert not unknown, f"{name}: {unknown}"


def test_compose_runs_only_commands_the_cli_has(compose: dict[str, Any]) -> None:
    """Every lethe service runs a lethe command whose options the CLI accepts."""
    commands = {name: check_cli(svc["command"]) for name, svc in lethe_services(compose).items()}
    assert commands["migrate"] == "migrate"
    assert commands["api"] == "api"
    assert commands["intake"] == "intake"
    assert compose["services"]["reconciler"]["command"] == ["lethe", "reconcile", "--loop", "60"]


def test_compose_has_one_scalable_worker_service_per_queue(compose: dict[str, Any]) -> None:
    """Each queue lethe knows has its own worker service, with nothing that stops `--scale`."""
    queues: dict[str, str] = {}
    for name, svc in lethe_services(compose).items():
        if svc["command"][1] != "worker":
            continue
        queue = worker_queue(svc["command"])
        assert queue not in queues.values(), f"{name}: {queue} has two services"
        queues[name] = queue
        assert "container_name" not in svc and "ports" not in svc, f"{name} could not be scaled"
        assert svc["stop_grace_period"] == "10m", f"{name}: let a running purge finish on stop"
    check_queues(set(queues.values()), "docker-compose.yml")


def test_compose_starts_everything_after_migrate(compose: dict[str, Any]) -> None:
    """migrate waits for healthy PostgreSQL and Redis; every other lethe service waits for migrate to succeed."""
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name, svc in lethe_services(compose).items():
        if name != "migrate":
            assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_compose_health_checks(compose: dict[str, Any]) -> None:
    """Infrastructure and workers have health checks; lethe services without a port opt out of the image's
    API check explicitly, and the API keeps it."""
    services = compose["services"]
    for name in ("redis", "postgres", "minio", "flower"):
        assert services[name]["healthcheck"]["test"], name
    assert "healthcheck" not in services["api"], "the api uses the image's HEALTHCHECK (GET /healthz)"
    for name, svc in lethe_services(compose).items():
        if svc["command"][1] == "worker":
            assert svc["healthcheck"]["test"][:3] == ["CMD", "python", "-c"], name
        elif name != "api":
            assert svc["healthcheck"] == {"disable": True}, name


def test_compose_mounts_keys_as_files_and_volumes_by_name(compose: dict[str, Any]) -> None:
    """The signing key and API tokens are secrets (files), the data map a config; data lives in named volumes."""
    for name, svc in lethe_services(compose).items():
        env = svc["environment"]
        assert set(svc["secrets"]) == {"lethe_signing_key", "lethe_api_tokens"}, name
        assert env["LETHE_SIGNING_KEY"] == "/run/secrets/lethe_signing_key"
        assert env["LETHE_API_TOKENS"] == "/run/secrets/lethe_api_tokens"
        assert svc["configs"] == [{"source": "lethe_datamap", "target": env["LETHE_DATA_MAP"]}]
    assert set(compose["secrets"]) == {"lethe_signing_key", "lethe_api_tokens"}
    declared = set(compose["volumes"])
    used = {v.split(":", 1)[0] for svc in compose["services"].values() for v in svc.get("volumes", [])}
    assert used == declared, "every volume is a named volume, and every named volume is used"


def test_compose_data_map_is_valid_and_its_buckets_are_created(compose: dict[str, Any]) -> None:
    """The data map Compose mounts loads, and minio-setup creates (versioned) every bucket it names on MinIO."""
    datamap = DataMap.load(DEPLOY / compose["configs"]["lethe_datamap"]["file"])
    buckets = set(compose["services"]["minio-setup"]["environment"]["BUCKETS"].split())
    for target in datamap.targets:
        if target.kind == "s3" and "minio" in (getattr(target, "endpoint_url", None) or ""):
            assert target.bucket in buckets, target.name
    assert "mc version enable" in compose["services"]["minio-setup"]["command"][0]


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    """Every image has an explicit tag, never `latest`; lethe's default tag is the package version."""
    for name, svc in compose["services"].items():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: {image}"
    for svc in lethe_services(compose).values():
        assert svc["image"] == f"lethe:{VERSION}"
        assert svc["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="init-secrets.sh needs openssl")
def test_init_secrets_writes_what_lethe_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """init-secrets.sh fills every empty secret of .env and writes a signing key and token file that lethe
    loads; run again, it changes nothing."""
    from orchestrator.api.auth import parse_tokens

    for name in ("init-secrets.sh", ".env.example"):
        shutil.copy(DEPLOY / name, tmp_path / name)
    subprocess.run(["sh", str(tmp_path / "init-secrets.sh")], check=True, capture_output=True)
    env_text = (tmp_path / ".env").read_text()
    subprocess.run(["sh", str(tmp_path / "init-secrets.sh")], check=True, capture_output=True)
    assert (tmp_path / ".env").read_text() == env_text
    env = dict(line.split("=", 1) for line in env_text.splitlines() if line and not line.startswith("#"))
    assert all(env[key] for key in ENV_SECRETS), "every secret placeholder is filled"
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0 and (tmp_path / "secrets").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("LETHE_SUBJECT_KEY", env["LETHE_SUBJECT_KEY"])
    monkeypatch.setenv("LETHE_SIGNING_KEY", str(tmp_path / env["SIGNING_KEY_FILE"]))
    monkeypatch.setenv("LETHE_DATABASE_URL", "postgresql://lethe@localhost/lethe")
    settings = Settings()
    assert len(settings.subject_key_bytes) == 32
    assert settings.signing_private_key is not None
    assert parse_tokens((tmp_path / env["API_TOKENS_FILE"]).read_text())[0][1].role.value == "admin"


# -- Dockerfile ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    result: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def instruction_json(instruction: dict[str, Any], keyword: str = "") -> list[str]:
    value = instruction["value"]
    if keyword:
        value = value[value.index(keyword) + len(keyword):]
    parsed = json.loads(value.strip())
    assert isinstance(parsed, list)
    return parsed


def test_dockerfile_is_multi_stage_with_pinned_bases(dockerfile: DockerfileParser) -> None:
    """Two stages at least; every base image has a tag, not `latest`, with a Python pyproject.toml allows."""
    assert dockerfile.is_multistage and len(stages(dockerfile)) >= 2
    required = PYPROJECT["project"]["requires-python"]
    minimum = tuple(int(p) for p in re.fullmatch(r">=\s*(\d+)\.(\d+)", required).groups())  # type: ignore[union-attr]
    for image in dockerfile.parent_images:
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", image
        if repository.endswith("python"):
            version = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", tag).groups())  # type: ignore[union-attr]
            assert version >= minimum, f"{image} is older than requires-python {required}"


def test_dockerfile_runs_as_non_root_without_compilers(dockerfile: DockerfileParser) -> None:
    """The final stage runs as a numeric non-root user, installs no compiler, and copies only from the build
    stage's wheels (bind-mounted, not a layer)."""
    final = stages(dockerfile)[-1]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    for tool in ("gcc", "g++", "clang", "build-essential", "make ", "cargo", "rustc", "-dev "):
        assert tool not in runs, f"the runtime stage installs {tool.strip()}"
    assert "--mount=type=bind,from=build" in runs


def test_dockerfile_entrypoint_command_and_healthcheck(dockerfile: DockerfileParser) -> None:
    """tini is PID 1; the default command is `lethe api` on the port the HEALTHCHECK probes at /healthz."""
    final = stages(dockerfile)[-1]
    by_name = {i["instruction"]: i for i in final}
    assert instruction_json(by_name["ENTRYPOINT"]) == ["/usr/bin/tini", "--"]
    cmd = instruction_json(by_name["CMD"])
    assert check_cli(cmd) == "api"
    port = cmd[cmd.index("--port") + 1]
    assert by_name["EXPOSE"]["value"] == port
    probe = instruction_json(by_name["HEALTHCHECK"], "CMD")
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")
    assert f"http://127.0.0.1:{port}/healthz" in probe[2]


def dockerignore_allows(path: str) -> bool:
    allowed = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def test_dockerfile_copies_only_what_the_context_has(dockerfile: DockerfileParser) -> None:
    """Every COPY source exists and is let through by the allow-list .dockerignore; secrets are not."""
    for instruction in dockerfile.structure:
        if instruction["instruction"] == "COPY" and "--from" not in instruction["value"]:
            for source in instruction["value"].split()[:-1]:
                assert (ROOT / source).exists(), source
                assert dockerignore_allows(source), f"{source} is excluded by .dockerignore"
    for private in ("deploy/.env", "deploy/secrets/signing-key.pem", ".venv", "lethe.db", "tests"):
        assert not dockerignore_allows(private), private


def test_every_runtime_data_file_is_packaged() -> None:
    """The image installs lethe from its wheel: every data file the packages read must be in package-data."""
    package_data = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    missing = []
    for package in ("orchestrator", "workers"):
        base = ROOT / package
        for path in base.rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc", ".mako") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(base).as_posix()
            if not any(fnmatch.fnmatch(relative, glob) for glob in package_data.get(package, [])):
                missing.append(f"{package}/{relative}")
    assert not missing, f"add to [tool.setuptools.package-data]: {missing}"


# -- Helm ------------------------------------------------------------------------------------------------------
SIGNING_KEY_PEM = ("-----BEGIN PRIVATE KEY-----\n"
                   "MC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
                   "-----END PRIVATE KEY-----\n")

INLINE_VALUES: dict[str, Any] = {
    "database": {"url": "postgresql://lethe:pw@postgres:5432/lethe"},
    "broker": {"url": "redis://redis-master:6379/0"},
    "secrets": {
        "subjectKey": {"value": "ab" * 32},
        "signingKey": {"value": SIGNING_KEY_PEM},
        "eventKey": {"value": "cd" * 32},
        "apiTokens": {"value": "t" * 40 + " admin first-admin\n"},
    },
    "dataMap": {"content": (DEPLOY / "datamap.yaml").read_text()},
}

SCENARIOS: dict[str, dict[str, Any]] = {
    # every secret inline, every worker on, KEDA on Redis with a password, an Ingress with TLS
    "inline-keda-redis": {
        **INLINE_VALUES,
        "workers": {"memory": {"enabled": True}, "control": {"enabled": True}},
        "keda": {"enabled": True, "redis": {"passwordSecret": {"name": "redis", "key": "password"}}},
        "api": {"ingress": {"enabled": True, "className": "nginx",
                            "tls": [{"hosts": ["lethe.example.com"], "secretName": "lethe-tls"}]}},
    },
    # everything from existing Secrets and ConfigMaps, KEDA on RabbitMQ, no intake, no API tokens
    "existing-keda-rabbitmq": {
        "database": {"existingSecret": "pg-app", "existingSecretKey": "uri"},
        "broker": {"existingSecret": "broker"},
        "secrets": {"subjectKey": {"existingSecret": "lethe-keys"},
                    "signingKey": {"existingSecret": "lethe-keys"}},
        "dataMap": {"existingConfigMap": "estate", "existingConfigMapKey": "map.yaml"},
        "intake": {"enabled": False},
        "keda": {"enabled": True, "broker": "rabbitmq"},
    },
    # inline secrets, fixed replicas, no migrate hook
    "inline-no-hook": {**INLINE_VALUES, "migrate": {"enabled": False}},
}


def render(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """`helm template`: manifests per template file."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name="lethe", namespace="privacy", is_install=True)
    return {name: [d for d in yaml.safe_load_all(text) if d]
            for name, text in files.items() if name.endswith(".yaml")}


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for docs in render(values).values() for doc in docs]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(SCENARIOS[request.param])


def test_chart_metadata_matches_the_package() -> None:
    """Chart.yaml's appVersion (the default image tag) is the package version; helm lint finds no error."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "lethe"
    assert chart["appVersion"] == VERSION
    for values in SCENARIOS.values():
        result = helm.lint(str(CHART), values, strict=True)
        assert not result["errors"], result


def test_chart_values_schema_rejects_mistyped_worker_settings() -> None:
    """values.schema.json catches a misspelt worker key or a concurrency of 0 instead of ignoring them."""
    for bad in ({"concurency": 4}, {"concurrency": 0}):
        with pytest.raises(helm.HelmError, match="schema"):
            render({**INLINE_VALUES, "workers": {"s3": bad}})


def test_chart_refuses_to_install_without_secrets() -> None:
    """The default values carry no secret: rendering stops with a message naming what to set."""
    with pytest.raises(helm.HelmError, match=re.escape("database.url")):
        render({})
    with pytest.raises(helm.HelmError, match=re.escape("secrets.eventKey")):
        render({**INLINE_VALUES, "secrets": {**INLINE_VALUES["secrets"], "eventKey": {"value": ""}}})


def test_rendered_chart_is_valid_kubernetes(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    """Every rendered manifest validates against Kubernetes' schemas (strict: no unknown field); the KEDA
    custom resources, which have no schema there, are checked by the KEDA tests below."""
    _, docs = scenario
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on Kubernetes {version}: {exc}")
        checked += 1
    assert checked >= 10


def test_chart_has_one_worker_deployment_per_queue() -> None:
    """Every queue lethe knows has a `workers:` entry; with all enabled, one Deployment consumes each queue."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    entries = {name: (w or {}).get("queue", f"purge.{name}") for name, w in values["workers"].items()}
    check_queues(set(entries.values()), "values.yaml workers")
    docs = manifests(SCENARIOS["inline-keda-redis"])
    queues = {}
    for name, deployment in of_kind(docs, "Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        if container["args"][1] == "worker":
            queues[name] = worker_queue(container["args"])
            assert deployment["spec"]["template"]["metadata"]["labels"]["lethe.io/queue"] == queues[name]
    assert sorted(queues.values()) == sorted(entries.values())


def test_chart_runs_only_commands_the_cli_has(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    """Containers use `args` (tini stays the entrypoint) with lethe commands the CLI parses."""
    _, docs = scenario
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            assert "command" not in container, f"{name}: `command` would replace tini"
            check_cli(container["args"])


def test_chart_sets_every_setting_and_only_settings() -> None:
    """The API gets every LETHE_* setting; no container gets a LETHE_* variable lethe does not read."""
    docs = manifests(SCENARIOS["inline-keda-redis"])
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            names = [e["name"] for e in container["env"]]
            assert len(names) == len(set(names)), f"{name}: duplicate variables"
            unknown = {n for n in names if n.startswith("LETHE_")} - setting_names()
            assert not unknown, f"{name}: {unknown}"
            if name == "lethe-api":
                assert {n for n in names if n.startswith("LETHE_")} == setting_names()


def test_chart_mounts_keys_from_secrets(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    """Key paths in the environment are files mounted from Secrets (or the data map's ConfigMap); secret
    values come from Secrets, never inline."""
    label, docs = scenario
    secrets = of_kind(docs, "Secret")
    for name, spec in pod_specs(docs):
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for variable in ("LETHE_SIGNING_KEY", "LETHE_DATA_MAP", "LETHE_API_TOKENS"):
            if variable in env:
                path = Path(env[variable]["value"])
                volume = volumes[mounts[str(path.parent)]]
                items = (volume.get("secret") or volume.get("configMap"))["items"]
                assert [i["path"] for i in items] == [path.name], (name, variable)
        for variable in ("LETHE_DATABASE_URL", "LETHE_BROKER_URL", "LETHE_SUBJECT_KEY", "LETHE_EVENT_KEY"):
            if variable in env:
                ref = env[variable]["valueFrom"]["secretKeyRef"]
                if label.startswith("inline"):
                    assert ref["key"] in secrets[ref["name"]]["stringData"], (name, variable)
        assert volumes["signing-key"]["secret"]["defaultMode"] == 0o440
    if label.startswith("existing"):
        assert not secrets, "existing secrets are used as they are, nothing is created"


def test_migrate_hook_runs_before_everything_it_needs_exists() -> None:
    """The migrate Job is a pre-install/pre-upgrade hook; each Secret it reads is a hook of lower weight, and
    it mounts nothing that is not (the data map's ConfigMap is an ordinary resource)."""
    docs = manifests(SCENARIOS["inline-keda-redis"])
    job = of_kind(docs, "Job")["lethe-migrate"]
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    weight = int(annotations["helm.sh/hook-weight"])
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["args"] == ["lethe", "migrate"]
    secrets = of_kind(docs, "Secret")
    needed = {e["valueFrom"]["secretKeyRef"]["name"] for e in spec["containers"][0]["env"] if "valueFrom" in e}
    needed |= {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert not any("configMap" in v for v in spec["volumes"])
    for name in needed:
        hook = secrets[name]["metadata"]["annotations"]
        assert "pre-install" in hook["helm.sh/hook"] and int(hook["helm.sh/hook-weight"]) < weight, name
    plain = manifests(SCENARIOS["inline-no-hook"])
    assert not of_kind(plain, "Job")
    assert all("annotations" not in s["metadata"] for s in of_kind(plain, "Secret").values())


def test_chart_probes_and_graceful_shutdown() -> None:
    """The API is probed at /healthz; workers by a Celery ping (the same as Compose's), and get a grace
    period to finish their purges on SIGTERM."""
    docs = manifests(SCENARIOS["inline-keda-redis"])
    deployments = of_kind(docs, "Deployment")
    api = deployments["lethe-api"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    ping = compose_raw()["x-worker-healthcheck"]["test"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    lease = int(values["config"]["LETHE_TASK_LEASE_SECONDS"])
    workers = [d for d in deployments.values() if d["metadata"]["labels"].get("lethe.io/queue")]
    assert workers
    for deployment in workers:
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container[probe]["exec"]["command"]
            assert command == ping[1:], deployment["metadata"]["name"]
            assert container[probe]["timeoutSeconds"] >= 15, "the ping waits up to 10 s, after ~2 s of imports"
        assert 60 <= spec["terminationGracePeriodSeconds"] <= lease
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    compile(ping[3], "worker ping", "exec")
    assert "Lethe().app.control.ping" in ping[3]


def test_keda_scales_each_worker_on_its_own_queue(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    """With KEDA, each worker Deployment leaves replicas to a ScaledObject that watches the queue it consumes;
    without, it has fixed replicas and no ScaledObject."""
    label, docs = scenario
    deployments = of_kind(docs, "Deployment")
    scaled = of_kind(docs, "ScaledObject")
    workers = {n: d for n, d in deployments.items() if d["metadata"]["labels"].get("lethe.io/queue")}
    if not label.startswith(("inline-keda", "existing-keda")):
        assert not scaled and all("replicas" in d["spec"] for d in workers.values())
        return
    assert set(scaled) == set(workers)
    for name, deployment in workers.items():
        assert "replicas" not in deployment["spec"], name
        spec = scaled[name]["spec"]
        assert scaled[name]["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"] == {"name": name}
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        queue = worker_queue(container["args"])
        (trigger,) = spec["triggers"]
        if trigger["type"] == "redis":
            assert trigger["metadata"]["listName"] == queue
            assert int(trigger["metadata"]["listLength"]) >= 1
            auth = trigger["authenticationRef"]["name"]
            assert of_kind(docs, "TriggerAuthentication")[auth]["spec"]["secretTargetRef"][0]["parameter"] == "password"
        else:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["queueName"] == queue
            assert trigger["metadata"]["hostFromEnv"] in {e["name"] for e in container["env"]}


def test_pdbs_services_and_ingress_select_real_pods(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    """Every PodDisruptionBudget and Service selects the pods of a Deployment; the Ingress routes to the
    API's Service by port name."""
    _, docs = scenario
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment").values()]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    pdbs = of_kind(docs, "PodDisruptionBudget")
    assert pdbs
    for name, pdb in pdbs.items():
        assert selects(pdb["spec"]["selector"]["matchLabels"]), name
    services = of_kind(docs, "Service")
    for name, service in services.items():
        assert selects(service["spec"]["selector"]), name
    for ingress in of_kind(docs, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services and backend["port"] == {"name": "http"}


def test_pods_run_the_package_image_as_the_image_user(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    """Every pod runs lethe:<package version> as the Dockerfile's non-root user, read-only, no privileges,
    with resource requests and limits."""
    _, docs = scenario
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    uid = int([i["value"] for i in stages(parser)[-1] if i["instruction"] == "USER"][-1].split(":")[0])
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == uid
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
        for container in spec["containers"]:
            assert container["image"] == f"lethe:{VERSION}", name
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/home/lethe"}, name


def test_chart_data_map_is_mounted_as_given() -> None:
    """The data map text given in values reaches the ConfigMap unchanged, and loads as a valid map."""
    docs = manifests(SCENARIOS["inline-keda-redis"])
    text = of_kind(docs, "ConfigMap")["lethe-datamap"]["data"]["datamap.yaml"]
    assert text == INLINE_VALUES["dataMap"]["content"].rstrip("\n")
    assert DataMap.parse(text).targets
