"""`hydracat serve`: a real Prefect server and runner in child processes, driven over the REST API."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from flows.prefect_setup import copy_database
from flows.settings import FlowSettings
from tests.registry_fixtures import free_port

CONSOLIDATE_PARAMETERS = {
    "method", "heads", "rank", "min_retention", "base_model", "refine", "distill_steps", "dry_run",
}  # fmt: skip


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_template):
    folder = tmp_path_factory.mktemp("serve")
    copy_database(prefect_template, folder / "prefect" / "prefect.db")  # migrating: see test_prefect_setup
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "HYDRACAT_"))}
    env |= {"PREFECT_HOME": str(folder / "prefect")} | FlowSettings.in_folder(folder).to_env()
    command = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)]
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10.0)

    def five_deployments():
        if process.poll() is not None:
            raise AssertionError(f"hydracat serve exited: {(folder / 'serve.log').read_text()[-3000:]}")
        found = api.post("/deployments/filter", json={}).json()
        return found if len(found) == 5 else None

    try:
        yield api, wait_for(five_deployments, 240, "the five deployments")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        api.close()
        log.close()


def by_name(deployments: list[dict]) -> dict[str, dict]:
    return {d["name"]: d for d in deployments}


def test_the_five_deployments_exist_with_parameter_forms_and_their_schedules(served):
    _, deployments = served
    found = by_name(deployments)
    assert set(found) == {"nightly", "watch", "sync-catalog", "consolidate", "consolidate-group"}
    consolidate_schema = found["consolidate"]["parameter_openapi_schema"]["properties"]
    assert set(consolidate_schema) == CONSOLIDATE_PARAMETERS
    assert "auto" in consolidate_schema["method"]["enum"]
    nightly_schema = found["nightly"]["parameter_openapi_schema"]["properties"]
    assert set(nightly_schema) == CONSOLIDATE_PARAMETERS | {"prefix"}
    assert found["sync-catalog"]["parameter_openapi_schema"]["properties"]["prefix"]["default"] == "adapters/"
    (schedule,) = found["nightly"]["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert all(
        found[name]["schedules"] == [] for name in ("consolidate", "sync-catalog", "consolidate-group")
    )
    (watch,) = found["watch"]["schedules"]
    assert watch["schedule"]["interval"] == 300.0  # seconds, the default
    assert found["watch"]["global_concurrency_limit"]["limit"] == 1
    assert found["watch"]["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    group_schema = found["consolidate-group"]["parameter_openapi_schema"]
    assert set(group_schema["required"]) == {"group", "base_model"}


def test_the_deployment_triggers_are_automations_the_ui_shows(served):
    api, deployments = served
    found = by_name(deployments)
    automations = {a["name"]: a for a in api.post("/automations/filter", json={}).json()}
    consolidate, sync = (
        automations["consolidate after adapter changes"],
        automations["sync after a base model change"],
    )
    assert consolidate["trigger"]["posture"] == "Proactive" and consolidate["trigger"]["within"] == 600.0
    assert consolidate["trigger"]["for_each"] == ["hydracat.base-model"]
    assert set(consolidate["trigger"]["expect"]) == {
        "hydracat.adapter.registered",
        "hydracat.adapter.retired",
    }
    (run,) = consolidate["actions"]
    assert run["type"] == "run-deployment" and run["deployment_id"] == found["consolidate"]["id"]
    assert run["parameters"] == {"base_model": "{{ event.resource['hydracat.base-model'] }}"}
    assert sync["actions"][0]["deployment_id"] == found["watch"]["id"]


def trigger_and_wait(api: httpx.Client, deployment: dict) -> tuple[dict, dict]:
    """Create a run as Prefect's own client does: a 503 (SQLite busy while the server's services start
    and write) is retried."""
    for _ in range(10):
        response = api.post(f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {}})
        if response.status_code != 503:
            break
        time.sleep(2.0)
    assert response.status_code in (200, 201), (response.status_code, response.text[-2000:])
    run = response.json()

    def finished():
        state = api.get(f"/flow_runs/{run['id']}").json()["state"]
        return state if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

    return run, wait_for(finished, 180, "the triggered flow run")


def test_nightly_runs_consolidate_through_its_own_deployment(served):
    """So that the merge runs on the consolidate deployment's pool (gpu in infra/prefect.yaml)."""
    api, deployments = served
    found = by_name(deployments)
    nightly_run, state = trigger_and_wait(api, found["nightly"])
    assert state["type"] == "COMPLETED", state
    runs = api.post("/flow_runs/filter", json={
        "flow_runs": {"deployment_id": {"any_": [found["consolidate"]["id"]]}}}).json()  # fmt: skip
    (child,) = [r for r in runs if r["parent_task_run_id"]]
    assert child["state"]["type"] == "COMPLETED"
    parent_task = api.get(f"/task_runs/{child['parent_task_run_id']}").json()
    assert parent_task["flow_run_id"] == nightly_run["id"]


def test_the_nightly_schedule_puts_its_runs_on_the_calendar(served):
    """Prefect's scheduler creates the nightly's upcoming runs (it failed on SQLAlchemy 2.1: issue 12)."""
    api, deployments = served
    nightly = by_name(deployments)["nightly"]

    def scheduled():
        runs = api.post("/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [nightly["id"]]}}})
        return [run for run in runs.json() if run["auto_scheduled"]] or None

    runs = wait_for(scheduled, 90, "the nightly's scheduled runs")
    assert all(run["state"]["type"] == "SCHEDULED" for run in runs)
    starts = [run["expected_start_time"] for run in runs]
    assert all("T02:00:00" in start for start in starts), starts
