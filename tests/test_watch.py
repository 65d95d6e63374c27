"""The catalog watches itself (`bench.watch.watching_stack`: `hydracat serve` with its Prefect server,
`hydracat api`, a moto S3 bucket, all over loopback): bucket notifications start syncs, a burst of
uploads for one base model is one debounced consolidate run, another base model's upload (found by
the watch schedule) is its own, and retiring a version through the HTTP API re-merges without it.

The tests share one stack and run in file order: each builds on what the one before published."""

import time

import httpx
import pytest

from bench.watch import TOKEN, minio_notification, poll_until, watching_stack
from flows.prefect_setup import copy_database
from tests.registry_fixtures import s3_endpoint_fixture  # noqa: F401

QUIET_WINDOW_S = 10  # Prefect's least for a Proactive trigger
WATCH_INTERVAL_S = 10
BASE_A, BASE_B = "watch-base-a", "watch-base-b"
BURST = [f"burst-{i}" for i in range(3)]
TIMEOUT_S = 240
EVENTS_S = 30  # the server stores an event a moment after it is sent


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_endpoint, prefect_template, tiny_base):
    work = tmp_path_factory.mktemp("watch")
    database = copy_database(prefect_template, work / "prefect.db")
    with watching_stack(work, [BASE_A, BASE_B], s3_endpoint=s3_endpoint, bucket="watch-test",
                        prefect_database=database, watch_interval_s=WATCH_INTERVAL_S,
                        quiet_window_s=QUIET_WINDOW_S, tiny_base=tiny_base) as running:  # fmt: skip
        yield running


def consolidate_runs(stack, base_model: str) -> list[dict]:
    runs = stack.flow_runs("consolidate", "consolidate")
    return [run for run in runs if run["parameters"].get("base_model") == base_model]


def resources(stack, event: str) -> set[str]:
    return {found["resource"]["prefect.resource.id"] for found in stack.events(event)}


def published_tasks(stack, at_least: int) -> set[tuple[str, ...]] | None:
    """The task sets of the published bundles once `at_least` are stored: the server writes events
    a moment after the registry answers."""
    published = {
        tuple(sorted(event["payload"]["tasks"])) for event in stack.events("hydracat.bundle.published")
    }
    return published if len(published) >= at_least else None


def test_object_created_refuses_bad_requests_and_starts_nothing(stack):
    url = f"{stack.registry_api}/v1/events/object-created"
    body = minio_notification(stack.bucket, "adapters/x/1/adapter_model.safetensors")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
    not_json = httpx.post(url, content=b"{not json", headers=auth | {"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not a bucket notification" in not_json.json()["detail"]
    no_records = httpx.post(url, json={"EventName": "s3:ObjectCreated:Put"}, headers=auth)
    assert no_records.status_code == 400 and "Records" in no_records.json()["detail"]
    ours = minio_notification(
        stack.bucket, "bundles/watch-base-a/b1/manifest.json"
    )  # what consolidate writes
    ignored = httpx.post(url, json=ours, headers=auth)
    assert ignored.status_code == 202 and ignored.json()["started"] == []
    assert ignored.json()["ignored"][0]["reason"] == "not an adapters/<name>/<version>/ file"
    assert stack.flow_runs("sync-catalog", "sync-catalog") == []


def test_a_burst_of_uploads_is_one_consolidate_run_per_base_model(stack):
    started = time.monotonic()
    for seed, task in enumerate(BURST):  # uploads a second apart, each notified as MinIO would
        response = stack.notify(stack.upload(task, BASE_A, seed))
        assert response.status_code == 202, response.text
        assert [run["prefix"] for run in response.json()["started"]] == [f"adapters/{task}"]
        time.sleep(1)
    stack.upload("other-0", BASE_B, 10)  # not notified: the watch schedule finds it

    bundle = poll_until(lambda: stack.current(BURST[-1]), TIMEOUT_S, "the burst to be served")
    burst_s = time.monotonic() - started
    assert {stack.current(task)["bundle_id"] for task in BURST} == {bundle["bundle_id"]}
    other = poll_until(lambda: stack.current("other-0"), TIMEOUT_S, "the other base model's upload")
    other_s = time.monotonic() - started
    print(f"upload to current: {burst_s:.1f} s pushed (quiet window {QUIET_WINDOW_S} s), "
          f"{other_s:.1f} s polled (watch every {WATCH_INTERVAL_S} s)")  # fmt: skip
    assert other["base_model"]["name"] == BASE_B and bundle["base_model"]["name"] == BASE_A

    (burst_run,) = consolidate_runs(stack, BASE_A)  # one run for the three uploads
    (other_run,) = consolidate_runs(stack, BASE_B)  # and its own for the other base model
    assert burst_run["state_type"] == "COMPLETED" and other_run["state_type"] == "COMPLETED"
    syncs = stack.flow_runs("sync-catalog", "sync-catalog")
    assert sorted(run["parameters"]["prefix"] for run in syncs) == [f"adapters/{task}" for task in BURST]
    assert all(run["state_type"] == "COMPLETED" for run in syncs)  # started by the endpoint, run by serve
    assert stack.flow_runs("sync-catalog", "watch")  # the schedule ran too
    registered = {f"hydracat.adapter.{task}.1" for task in [*BURST, "other-0"]}
    poll_until(
        lambda: registered <= resources(stack, "hydracat.adapter.registered"), EVENTS_S, "registered events"
    )
    published = poll_until(lambda: published_tasks(stack, 2), EVENTS_S, "the two bundle.published events")
    assert published == {tuple(BURST), ("other-0",)}


def test_retiring_a_version_through_the_api_remerges_without_it(stack):
    before = stack.current(BURST[0])["bundle_id"]
    retired = httpx.post(f"{stack.registry_api}/v1/adapters/{BURST[1]}/1/retire",
                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert retired.status_code == 200 and retired.json()["status"] == "retired"

    def remerged() -> dict | None:
        current = stack.current(BURST[0])
        return current if current["bundle_id"] != before else None

    bundle = poll_until(remerged, TIMEOUT_S, "the group to be merged again without the retired version")
    members = httpx.get(f"{stack.registry_api}/v1/bundles/{bundle['bundle_id']}").json()["members"]
    assert sorted(member["task"] for member in members) == [BURST[0], BURST[2]]
    assert stack.current(BURST[2])["bundle_id"] == bundle["bundle_id"]
    assert stack.current(BURST[1])["bundle_id"] == before  # a retired version's task keeps what it had
    retired_version = f"hydracat.adapter.{BURST[1]}.1"
    poll_until(
        lambda: resources(stack, "hydracat.adapter.retired") == {retired_version},
        EVENTS_S,
        "the retired event",
    )
    assert len(consolidate_runs(stack, BASE_A)) == 2 and len(consolidate_runs(stack, BASE_B)) == 1
