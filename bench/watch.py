"""`hydracat bench watch`: seconds from an upload to `hydracat registry current` answering with the
adapter's bundle, through the real services.

The stack (`watching_stack`, also what tests/test_watch.py runs): a moto S3 server (the bucket),
``hydracat serve`` (its own Prefect server, the watch schedule and the deployment triggers, serving
the flow runs) and ``hydracat api`` (the registry HTTP API with the bucket-notification endpoint),
child processes over one SQLite registry, with the tiny random Llama of `bench.synthetic`
installed under one name per base model. Two paths are measured at once: each uploads a new LoRA
on a base model of its own (config first, weights last, as `flows.catalog` asks), at the same
time, and polls ``GET /v1/tasks/<task>/bundle`` every `POLL_S` until it answers:

- ``push``: the upload, then the object-created notification MinIO posts for it: a sync starts at
  once; consolidate starts when the quiet window has passed;
- ``poll``: the upload alone: the next watch run finds it, then the quiet window, then consolidate.

Expected: push ≈ quiet window + a consolidate run; poll ≈ that + up to one watch interval.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from bench.host import host_info
from bench.scale import write_adapter
from bench.synthetic import build_tiny_base
from flows.prefect_setup import copy_database, template_database
from flows.processes import free_port, stop_process, wait_until_answering
from flows.settings import FlowSettings
from flows.triggers import QUIET_WINDOW_S, WATCH_INTERVAL_S
from hydraopt.formats.layout import PEFT_FILES, adapter_key
from registry.store.s3 import S3Store

T = TypeVar("T")
TOKEN = "bench-watch-token"
POLL_S = 1.0
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Stack:
    """The running services: their URLs, the bucket, the settings the flows use, the work folder."""

    prefect_api: str
    registry_api: str
    bucket: str
    store: S3Store
    settings: FlowSettings
    work: Path

    def upload(self, name: str, base_model: str, seed: int, version: str = "1") -> str:
        """A LoRA on `base_model` (`bench.scale.write_adapter`: the A factors of every adapter on a base
        model are the same, so the default merge, one head per task, is exact and passes the gate)
        uploaded as adapters/<name>/<version>/, weights last; returns the key of its weights file."""
        folder = write_adapter(self.work / "made" / f"{name}-{version}", base_model, seed)
        key = adapter_key(name, version)
        for file in sorted(PEFT_FILES, key=lambda file: file.endswith(".safetensors")):
            self.store.put_file(f"{key}/{file}", folder / file)
        return f"{key}/{PEFT_FILES[-1]}"

    def notify(self, key: str, token: str | None = TOKEN) -> httpx.Response:
        """POST what MinIO posts for the created object `key` to the object-created endpoint."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = minio_notification(self.bucket, key)  # the store has no prefix: its keys are the bucket's
        return httpx.post(f"{self.registry_api}/v1/events/object-created", json=body, headers=headers)

    def current(self, task: str) -> dict | None:
        """`registry current` over HTTP: the task's bundle, None while it has none."""
        response = httpx.get(f"{self.registry_api}/v1/tasks/{task}/bundle")
        return response.json() if response.status_code == 200 else None

    def flow_runs(self, flow: str, deployment: str) -> list[dict]:
        """The runs of deployment `flow/deployment`, oldest first (Prefect's REST API)."""
        body = {"flows": {"name": {"any_": [flow]}}, "deployments": {"name": {"any_": [deployment]}},
                "sort": "EXPECTED_START_TIME_ASC"}  # fmt: skip
        return httpx.post(f"{self.prefect_api}/flow_runs/filter", json=body).raise_for_status().json()

    def events(self, name: str) -> list[dict]:
        """The events called `name` the Prefect server has stored."""
        body = {"filter": {"event": {"name": [name]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}}
        return httpx.post(f"{self.prefect_api}/events/filter", json=body).raise_for_status().json()["events"]


def minio_notification(bucket: str, key: str, event: str = "s3:ObjectCreated:Put") -> dict:
    """The body MinIO's webhook target posts for one object (abridged: the fields not read are left out)."""
    quoted = key.replace("/", "%2F").replace(" ", "+")
    record = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": event,
        "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quoted, "size": 1234, "eTag": "d41d8cd98f00b204e9800998ecf8427e"}},
    }  # fmt: skip
    return {"EventName": event, "Key": f"{bucket}/{key}", "Records": [record]}


def poll_until(check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = POLL_S) -> T:
    """`check()`'s first truthy answer, polled every `every_s`; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def watching_stack(
    work: Path,
    base_models: list[str],
    *,
    s3_endpoint: str,
    bucket: str,
    prefect_database: Path,
    watch_interval_s: int,
    quiet_window_s: int,
    tiny_base: Path | None = None,
) -> Iterator[Stack]:
    """`hydracat serve` and `hydracat api` in `work` over a SQLite registry and the S3 `bucket`
    (created if missing), Prefect on `prefect_database` (a copy of the migrated template); the tiny
    base model installed under every name of `base_models`. Logs: serve.log, api.log in `work`."""
    settings = FlowSettings.in_folder(work, s3_bucket=bucket, s3_endpoint_url=s3_endpoint, api_token=TOKEN)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    base = tiny_base or build_tiny_base(work / "tiny-base")
    for name in base_models:
        (settings.models_dir / name).symlink_to(base, target_is_directory=True)
    store = S3Store(bucket, "", endpoint_url=s3_endpoint)
    with contextlib.suppress(Exception):
        store.client.create_bucket(Bucket=bucket)
    prefect_port, api_port = free_port(), free_port()
    prefect_api, registry_api = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{api_port}"
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env |= (
        AWS_TEST_ENV
        | settings.to_env()
        | {
            "PREFECT_HOME": str(work / "prefect"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_database}",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        }
    )
    cli = [sys.executable, "-m", "flows.cli"]
    serve = [*cli, "serve", "--port", str(prefect_port), "--watch-interval", str(watch_interval_s),
             "--quiet-window", str(quiet_window_s), "--limit", "4"]  # fmt: skip
    processes = [start(serve, env, work / "serve.log")]
    try:
        wait_until_answering(processes[0], f"{prefect_api}/health", "hydracat serve's Prefect server", 240)
        api = [*cli, "api", "--port", str(api_port)]
        processes.append(start(api, env | {"PREFECT_API_URL": prefect_api}, work / "api.log"))
        wait_until_answering(processes[1], f"{registry_api}/v1/adapters", "hydracat api", 120)
        stack = Stack(prefect_api, registry_api, bucket, store, settings, work)

        def served() -> bool:
            names = {(d["name"]) for d in httpx.post(f"{prefect_api}/deployments/filter", json={}).json()}
            automations = httpx.post(f"{prefect_api}/automations/filter", json={}).json()
            return {"watch", "consolidate", "sync-catalog"} <= names and len(automations) >= 2

        poll_until(served, 120, "hydracat serve's deployments and triggers")
        yield stack
    finally:
        for process in reversed(processes):
            stop_process(process)


def measure(stack: Stack, paths: dict[str, str], timeout_s: float) -> list[dict]:
    """Upload one adapter per path (`paths`: path -> its base model) at the same time, notify the push
    path's; seconds from the uploads until each is served."""
    started = time.monotonic()
    for seed, (path, base_model) in enumerate(paths.items()):
        key = stack.upload(f"watch-{path}", base_model, seed)
        if path == "push":
            stack.notify(key).raise_for_status()
    results: dict[str, dict] = {}

    def all_served() -> bool:
        for path in paths.keys() - results.keys():
            if bundle := stack.current(f"watch-{path}"):
                seconds = round(time.monotonic() - started, 1)
                results[path] = {
                    "path": path,
                    "bundle_id": bundle["bundle_id"],
                    "upload_to_current_s": seconds,
                }
                print(
                    f"[bench watch] {path}: served by bundle {bundle['bundle_id']} after {seconds} s",
                    flush=True,
                )
        return len(results) == len(paths)

    poll_until(all_served, timeout_s, "every upload to be served")
    return [results[path] for path in paths]


def run_bench(args: argparse.Namespace) -> int:
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_TEST_ENV)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    with tempfile.TemporaryDirectory(prefix="hydracat-bench-watch-") as tmp:
        work = Path(tmp)
        database = copy_database(template_database(), work / "prefect.db")
        paths = {"push": "watch-base-push", "poll": "watch-base-poll"}
        timeout_s = args.quiet_window + args.watch_interval + 600
        try:
            endpoint = f"http://127.0.0.1:{port}"
            windows = dict(watch_interval_s=args.watch_interval, quiet_window_s=args.quiet_window)
            with watching_stack(work, [*paths.values()], s3_endpoint=endpoint, bucket="bench-watch",
                                prefect_database=database, **windows) as stack:  # fmt: skip
                results = measure(stack, paths, timeout_s)
        finally:
            moto.stop()
            for name in ("serve.log", "api.log") if args.keep_logs else ():
                shutil.copyfile(work / name, Path(args.json).with_suffix(f".{name}"))
    report = {
        "bench": "watch",
        "host": host_info(),
        "watch_interval_s": args.watch_interval,
        "quiet_window_s": args.quiet_window,
        "paths": results,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"[bench watch] wrote {args.json}")
    return 0


def add_watch_bench(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "watch", help="seconds from an upload to its bundle being current (push, poll)"
    )
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--watch-interval", type=int, default=WATCH_INTERVAL_S,
                        help=f"seconds between watch runs (default {WATCH_INTERVAL_S})")  # fmt: skip
    parser.add_argument("--quiet-window", type=int, default=QUIET_WINDOW_S,
                        help=f"consolidate's quiet window, seconds (default {QUIET_WINDOW_S})")  # fmt: skip
    parser.add_argument("--keep-logs", action="store_true", help="copy serve.log and api.log beside the JSON")
    parser.set_defaults(handler=run_bench)
