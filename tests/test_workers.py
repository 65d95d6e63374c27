"""Fan-out on work pools: a local Prefect server, the deployments of infra/prefect.yaml (`prefect deploy`),
a `cpu` process worker and two `gpu` process workers. One `consolidate` run from its deployment starts a
`consolidate-group` flow run per group; the groups are merged on both gpu workers, and a group whose
lock another process holds waits for it. On a PostgreSQL registry only, what workers on several
machines share (the group lock on both backends: tests/test_flow_faults.py, test_registry_concurrency.py)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.synthetic import write_random_lora
from flows.prefect_setup import copy_database
from flows.processes import free_port, stop_process, wait_until_answering
from flows.settings import FlowSettings
from tests.flow_fixtures import RANK, SHAPES
from tests.registry_fixtures import db_url_fixture, empty_db_url_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BASES = [f"w-base-{i}" for i in range(3)]
PER_GROUP = 2
PARAMETERS = {"rank": PER_GROUP * RANK}  # K = N heads, r' = Σ r_i: exact merges, every gate passes
WORKERS = {"cpu-1": "cpu", "gpu-a": "gpu", "gpu-b": "gpu"}
GPU_LIMIT = 2  # flow runs at once per gpu worker: neither can take all three groups


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def pools(tmp_path, db_url, tiny_base, prefect_template):
    """A Prefect server (this process's API), the catalog synced (three groups of two adapters), the
    deployments of infra/prefect.yaml pulled from this checkout, and the three workers; yields
    (settings, worker logs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.context import refresh_global_settings_context

    from flows.catalog import sync_catalog
    from registry.db import make_engine, upgrade

    settings = FlowSettings.in_folder(tmp_path, database_url=db_url)
    catalog(settings, tiny_base, tmp_path / "made")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    database = copy_database(prefect_template, tmp_path / "prefect" / "prefect.db")
    env = settings.to_env() | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
        "PREFECT_API_URL": api,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    refresh_global_settings_context()  # this process's flows and clients use that server
    processes, logs = [], {}
    try:
        processes.append(
            start(["server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path / "server.log")
        )
        wait_until_answering(processes[0], f"{api}/health", "the Prefect server", 180)
        engine = make_engine(db_url)
        upgrade(engine)
        engine.dispose()
        assert len(sync_catalog()["registered"]) == len(BASES) * PER_GROUP
        with get_client(sync_client=True) as client:
            for pool in sorted(set(WORKERS.values())):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        infra = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
        infra["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(infra))
        deploy = ["--no-prompt", "deploy", "--prefect-file", str(tmp_path / "prefect.yaml"),
                  "--name", "consolidate", "--name", "consolidate-group"]  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "prefect", *deploy], cwd=ROOT, text=True,
                             capture_output=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        for name, pool in WORKERS.items():
            limit = ["--limit", str(GPU_LIMIT)] if pool == "gpu" else []
            logs[name] = tmp_path / f"{name}.log"
            worker = ["worker", "start", "--pool", pool, "--type", "process", "--name", name, *limit]
            processes.append(start(worker, logs[name]))
        yield settings, logs
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all()  # this process's logs and events, before the server goes
        EventsWorker.drain_all()
        for process in reversed(processes):
            stop_process(process)
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
        refresh_global_settings_context()


def catalog(settings: FlowSettings, base: Path, made: Path) -> None:
    """`PER_GROUP` random adapters on each of the base models `BASES` (the tiny Llama under each name),
    in the local store under adapters/<name>/1/."""
    settings.models_dir.mkdir(parents=True)
    for i, name in enumerate(BASES):
        (settings.models_dir / name).symlink_to(base, target_is_directory=True)
        for j in range(PER_GROUP):
            folder = write_random_lora(
                made / f"{name}-t{j}", SHAPES, rank=RANK, seed=100 * i + j, base_model=name
            )
            target = settings.registry.store_path / "adapters" / f"{name}-t{j}" / "1"
            shutil.copytree(folder, target)


def start(prefect_args: list[str], log: Path) -> subprocess.Popen:
    """`prefect <args>` in a child process (this environment), its output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "prefect", *prefect_args], env=os.environ.copy(),
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_one_consolidate_run_merges_its_groups_on_both_gpu_workers_under_the_group_locks(pools):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.deployments import run_deployment

    from flows.consolidate import plan_groups
    from flows.locks import group_lock
    from registry.api import Registry
    from registry.errors import NotFoundError

    settings, logs = pools
    groups = plan_groups(None, settings)
    assert len(groups) == len(BASES)
    held = sorted(groups)[0]
    registry = Registry.from_settings(settings.registry)

    def group_runs(client) -> list:
        by_deployment = DeploymentFilter(name=DeploymentFilterName(any_=["consolidate-group"]))
        return client.read_flow_runs(deployment_filter=by_deployment)

    def run_logs(client, run) -> str:
        found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        return "\n".join(log.message for log in found)

    with get_client(sync_client=True) as client:
        with group_lock(settings.registry.database_url, held):  # another process merging that group
            parent = run_deployment("consolidate/consolidate", parameters=PARAMETERS, timeout=0)

            def the_others_done():
                runs = group_runs(client)
                done = [r for r in runs if r.state and r.state.is_completed()]
                return runs if len(runs) == len(BASES) and len(done) == len(BASES) - 1 else None

            runs = wait_for(the_others_done, 400, "every group but the locked one to be merged")
            (waiting,) = [r for r in runs if not r.state.is_completed()]
            assert waiting.parameters["group"] == held

            def logged_the_wait():
                state = client.read_flow_run(waiting.id).state
                return state.is_running() and "another run holds its lock" in run_logs(client, waiting)

            wait_for(logged_the_wait, 120, "the locked group's run to wait for its lock")
            assert client.read_flow_run(parent.id).state.is_running()  # consolidate waits for its groups
            for row in groups[held]:  # nothing published for the locked group yet
                with pytest.raises(NotFoundError):
                    registry.current_bundle(row["name"])

        def parent_ended():
            state = client.read_flow_run(parent.id).state
            return state if state.is_final() else None

        assert wait_for(parent_ended, 300, "consolidate to end").is_completed()
        runs = group_runs(client)
        assert len(runs) == len(BASES) and all(r.state.is_completed() for r in runs)
        assert all(r.parent_task_run_id for r in runs)  # shown under consolidate in the UI

    text = {name: log.read_text() for name, log in logs.items()}
    by_worker = {name: {r.id for r in runs if f"submitting flow run '{r.id}'" in text[name]} for name in logs}
    assert by_worker["gpu-a"] and by_worker["gpu-b"], by_worker  # both gpu workers merged groups
    assert by_worker["gpu-a"] | by_worker["gpu-b"] == {r.id for r in runs} and not by_worker["cpu-1"]
    assert f"submitting flow run '{parent.id}'" in text["cpu-1"]
    for label, rows in groups.items():
        (bundle,) = {registry.current_bundle(row["name"])["bundle_id"] for row in rows}
        assert registry.get_bundle(bundle)["manifest"]["gate"]["publish"] is True, label
