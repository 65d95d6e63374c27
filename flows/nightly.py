"""`nightly`: sync the catalog, then consolidate it. Deployed on a cron schedule by `hydracat serve`.

Run from a deployment, nightly starts consolidate through its own deployment (`consolidate/consolidate`,
on the `gpu` pool in infra/prefect.yaml) and waits for it, so the merge runs where that deployment
says; run directly (a script, the demo, tests), or where no such deployment exists, consolidate runs
in-process as a subflow.
"""

import inspect
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment

from flows.catalog import sync_catalog
from flows.consolidate import consolidate
from flows.prefect_setup import ensure_api
from hydraopt.formats.layout import ADAPTERS_PREFIX

CONSOLIDATE_DEPLOYMENT = "consolidate/consolidate"


def with_consolidate_parameters(function):
    """`function`'s own parameters, then consolidate's: declared once (in `consolidate`), shown and
    validated by Prefect as nightly's own."""
    own = [p for p in inspect.signature(function).parameters.values() if p.kind is not p.VAR_KEYWORD]
    theirs = inspect.signature(consolidate.fn).parameters.values()
    function.__signature__ = inspect.signature(function).replace(parameters=[*own, *theirs])
    return function


@flow(name="nightly")
@with_consolidate_parameters
def nightly(prefix: str = ADAPTERS_PREFIX, **parameters: Any) -> dict:
    """Register new adapters from the bucket, then merge, evaluate and publish every group."""
    synced = sync_catalog(prefix)
    return {"sync": synced, "consolidate": run_consolidate(parameters)}


def run_consolidate(parameters: dict) -> dict:
    """Consolidate on its deployment when nightly runs from one, else as a subflow."""
    if deployment.get_id():
        try:
            run = run_deployment(CONSOLIDATE_DEPLOYMENT, parameters=parameters, timeout=None, poll_interval=2)
        except ObjectNotFound:
            get_run_logger().info("no %s deployment: consolidating in this process", CONSOLIDATE_DEPLOYMENT)
        else:
            if not run.state or not run.state.is_completed():
                raise RuntimeError(f"consolidate flow run {run.id} ended {run.state and run.state.name}")
            return {"flow_run_id": str(run.id), "state": run.state.name}
    return consolidate(**parameters)


if __name__ == "__main__":
    ensure_api()  # ephemeral mode: the database migrated first, the project's start-up timeout
    print(nightly())
