"""`hydracat bench reliability`: bad inputs, injected faults and HTTP load on a throwaway catalog.

Everything lives in a temporary folder: a SQLite registry, a moto S3 server on a free loopback port
(needs the dev extra), a temporary Prefect server (Prefect's test harness, its own database) and the
tiny random models of `bench.synthetic`. Sections of the JSON:

- ``inputs``: every case of `bench.bad_inputs` is given to ``hydracat merge`` (in-process:
  exit status 2 and one ``error:`` line naming the reason) and dropped in the bucket beside valid
  adapters for ``sync-catalog`` (quarantined with a matching reason, the valid ones registered);
  the unsafe object keys are refused; the pickle's payload never runs.
- ``faults``: one scenario per fault (`bench.faults`), each on a new adapter version so there
  is something to publish: the faulty run, then the rerun, with what was checked.
- ``load``: `bench.load.load_under_publishing` (its own registry and server).
- ``totals``: inputs tried and refused, faults injected and survived, requests served, errors, p99,
  and the lost or inconsistent records that `bench.faults.audit` finds at the end.
"""

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from bench import faults
from bench.bad_inputs import BAD_KEYS, refusal_matches, write_bad_adapters
from bench.host import host_info
from bench.synthetic import build_tiny_base, llama_attention_shapes, write_random_lora
from flows.settings import FlowSettings
from hydraopt.formats.layout import ADAPTERS_PREFIX, BUNDLES_PREFIX, adapter_key, model_slug
from registry.api import Registry
from registry.errors import NotFoundError
from registry.store.s3 import S3Store

BASE_MODEL = "hydracat/reliability-tiny"
RANK = 4
SHAPES = llama_attention_shapes(layers=2, hidden=64, kv_out=32)  # the modules of build_tiny_base
TASKS = ("summarise", "translate", "classify")
LOSSLESS = {"rank": RANK * len(TASKS)}  # K = N, r' = Σ r_i: exact, the gate always passes
BUCKET = "reliability"


def log(message: str) -> None:
    print(f"[bench reliability] {message}", file=sys.stderr, flush=True)


@dataclass
class Catalog:
    """The throwaway catalog: its folder, bucket and registry; adapters get new versions on demand."""

    root: Path
    store: S3Store
    database_url: str
    endpoint: str
    versions: dict[str, int] = field(default_factory=dict)

    def registry(self) -> Registry:
        return Registry.from_settings()

    def upload(self, folder: Path, key: str) -> None:
        for path in sorted(folder.iterdir()):
            self.store.put_file(f"{key}/{path.name}", path)

    def new_version(self, task: str) -> Path:
        """A new random LoRA version of `task` in the bucket; returns its local folder."""
        version = self.versions.get(task, 0) + 1
        self.versions[task] = version
        seed = 1000 * version + TASKS.index(task)
        folder = write_random_lora(
            self.root / "sources" / str(version) / task, SHAPES, rank=RANK, seed=seed, base_model=BASE_MODEL
        )
        self.upload(folder, adapter_key(task, version))
        return folder

    def current(self) -> dict[str, str | None]:
        registry = self.registry()
        found = {}
        for task in TASKS:
            try:
                found[task] = registry.current_bundle(task)["bundle_id"]
            except NotFoundError:
                found[task] = None
        return found

    def moves(self) -> dict[str, int]:
        registry = self.registry()
        return {task: len(registry.history(task)) for task in TASKS}

    def bundle_keys(self) -> set[str]:
        return set(self.store.list(BUNDLES_PREFIX))


@contextlib.contextmanager
def throwaway_catalog(root: Path) -> Iterator[Catalog]:
    """Moto on a free port, the HYDRACAT_* environment, a migrated SQLite registry, a Prefect server."""
    import boto3
    from moto.server import ThreadedMotoServer

    from flows.prefect_setup import temporary_server
    from flows.processes import free_port
    from registry.db import make_engine, upgrade

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    database_url = f"sqlite:///{root / 'registry.db'}"
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env |= FlowSettings.in_folder(
        root, database_url=database_url, s3_bucket=BUCKET, s3_endpoint_url=endpoint
    ).to_env()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    with mock.patch.dict(os.environ, env):
        server.start()
        try:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            engine = make_engine(database_url)
            upgrade(engine)
            engine.dispose()
            build_tiny_base(root / "models" / model_slug(BASE_MODEL))
            with temporary_server(root / "prefect.db"):
                yield Catalog(root, S3Store(BUCKET, "", endpoint_url=endpoint), database_url, endpoint)
        finally:
            server.stop()


# inputs


def merge_in_process(folders: list[Path], out: Path) -> dict:
    """`hydracat merge` in this process: exit status and its `error:` lines."""
    from flows.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(["merge", "--out", str(out), *map(str, folders)])
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    return {"exit": status, "message": errors[-1] if errors else "", "error_lines": len(errors)}


def run_inputs(catalog: Catalog) -> dict:
    import boto3

    from flows.catalog import sync_catalog

    work = catalog.root / "bad-inputs"
    marker = work / "PWNED"
    good = [catalog.new_version(task) for task in TASKS]
    cases = write_bad_adapters(good[0], work / "adapters", marker)
    results = {}
    for case, (folder, words) in cases.items():
        merged = merge_in_process([good[1], folder], work / "merged" / case)
        merged["refused"] = (
            merged["exit"] == 2 and merged["error_lines"] == 1 and refusal_matches(merged["message"], words)
        )
        catalog.upload(folder, adapter_key(f"bad-{case}", "1"))
        results[case] = {"expected": words, "merge": merged}
    client = boto3.client("s3", endpoint_url=catalog.endpoint)
    for key in BAD_KEYS:  # the store refuses to write these; a careless producer might not
        client.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    synced = sync_catalog(prefix=ADAPTERS_PREFIX)
    reasons = {
        a["name"]: a["quarantine_reason"] for a in catalog.registry().list_adapters(status="quarantined")
    }
    for case, result in results.items():
        reason = reasons.get(f"bad-{case}", "")
        result["sync"] = {"quarantined": bool(reason), "reason": reason,
                          "matches": refusal_matches(reason, result["expected"])}  # fmt: skip
        result["refused"] = result["merge"]["refused"] and result["sync"]["matches"]
    refused = synced["refused_keys"]
    keys = {
        repr(key): any(repr(key) in why for why in refused) or not key.startswith(ADAPTERS_PREFIX)
        for key in BAD_KEYS
    }
    registered = sorted(synced["registered"])
    return {
        "cases": results,
        "unsafe_keys": {"refused": keys, "how": "refused by key validation, or not under the prefix at all"},
        "valid_registered": registered,
        "valid_all_registered": registered == sorted(f"{task}/1" for task in TASKS),
        "pickle_executed": marker.exists(),
        "tried": len(results) + len(keys),
        "refused": sum(r["refused"] for r in results.values()) + sum(keys.values()),
    }


# faults


@dataclass
class Scenario:
    """One fault: `run` injects it into real flow runs and returns (times injected, checks)."""

    name: str
    what: str
    run: Callable[[Catalog], tuple[int, dict[str, bool]]]


def consolidated(catalog: Catalog) -> list[str]:
    from flows.consolidate import consolidate

    return consolidate(**LOSSLESS)["published"]


def failed(flow: Callable, **kwargs) -> bool:
    return flow(return_state=True, **kwargs).is_failed()


def synced(catalog: Catalog, task: str = TASKS[0]) -> None:
    from flows.catalog import sync_catalog

    catalog.new_version(task)
    sync_catalog()


def moved_once(catalog: Catalog, before: dict[str, int], published: list[str]) -> dict[str, bool]:
    """One bundle published, every task on it, exactly one new move each."""
    after = catalog.moves()
    return {
        "one_bundle_published": len(published) == 1,
        "every_task_on_it": set(catalog.current().values()) == set(published),
        "one_move_per_task": all(after[t] == before[t] + 1 for t in TASKS),
    }


def s3_transient(catalog: Catalog) -> tuple[int, dict[str, bool]]:
    synced(catalog)
    before = catalog.moves()
    with faults.failing(
        S3Store, "put_file", faults.s3_unreachable, times=2, when=faults.under(BUNDLES_PREFIX)
    ) as f:
        published = consolidated(catalog)
    return f.raised, {"retried_to_success": f.calls > f.raised, **moved_once(catalog, before, published)}


def s3_outage(catalog: Catalog) -> tuple[int, dict[str, bool]]:
    from flows.consolidate import consolidate

    synced(catalog)
    before, serving = catalog.moves(), catalog.current()
    with faults.failing(S3Store, "put_file", faults.s3_unreachable, when=faults.under(BUNDLES_PREFIX)) as f:
        run_failed = failed(consolidate, **LOSSLESS)
    checks = {
        "run_failed": run_failed,
        "tried_1_plus_3_times": f.raised == 4,
        "nothing_moved": catalog.current() == serving and catalog.moves() == before,
    }
    return f.raised, checks | moved_once(catalog, before, consolidated(catalog))


def s3_timeout(catalog: Catalog) -> tuple[int, dict[str, bool]]:
    from flows.catalog import sync_catalog

    task = TASKS[1]
    catalog.new_version(task)
    key = f"{adapter_key(task, catalog.versions[task])}/"
    with faults.failing(S3Store, "download", faults.s3_read_timeout, when=faults.under(key)) as lasting:
        sync_failed = failed(sync_catalog)
    names = {f"{a['name']}/{a['version']}" for a in catalog.registry().list_adapters()}
    unregistered = key.removeprefix(ADAPTERS_PREFIX).rstrip("/") not in names
    with faults.failing(
        S3Store, "download", faults.s3_read_timeout, times=2, when=faults.under(key)
    ) as brief:
        rerun = sync_catalog()
    before = catalog.moves()
    checks = {
        "lasting_timeout_failed_the_sync": sync_failed and lasting.raised == 4,
        "nothing_registered_or_quarantined": unregistered,
        "brief_timeouts_retried": brief.raised == 2 and rerun["quarantined"] == [],
        "registered_on_rerun": len(rerun["registered"]) == 1,
    }
    return lasting.raised + brief.raised, checks | moved_once(catalog, before, consolidated(catalog))


def db_dropped(catalog: Catalog) -> tuple[int, dict[str, bool]]:
    synced(catalog)
    before = catalog.moves()
    with faults.failing(Registry, "publish_bundle", faults.db_connection_dropped, times=1) as f:
        published = consolidated(catalog)
    return f.raised, {"commit_retried": f.calls == 2, **moved_once(catalog, before, published)}


def disk_full(catalog: Catalog) -> tuple[int, dict[str, bool]]:
    import flows.consolidate
    from flows.consolidate import consolidate

    synced(catalog)
    before, serving, objects = catalog.moves(), catalog.current(), catalog.bundle_keys()
    with faults.failing(flows.consolidate, "write_bundle", faults.disk_full) as f:
        run_failed = failed(consolidate, **LOSSLESS)
    staged = [p for p in (catalog.root / "work").iterdir() if p.name.startswith("hydracat-bundle-")]
    checks = {
        "run_failed": run_failed,
        "no_new_objects": catalog.bundle_keys() == objects,
        "no_staging_left": not staged,
        "nothing_moved": catalog.current() == serving and catalog.moves() == before,
    }
    return f.raised, checks | moved_once(catalog, before, consolidated(catalog))


def worker_killed(catalog: Catalog) -> tuple[int, dict[str, bool]]:
    from flows.consolidate import plan_groups
    from flows.locks import group_lock

    synced(catalog)
    before, serving = catalog.moves(), catalog.current()
    killed = [
        faults.kill_consolidate_at(stage, catalog.root / "killed", **LOSSLESS)
        for stage in ("merge", "commit")
    ]
    busy = []
    for label in plan_groups(None):
        with group_lock(catalog.database_url, label, on_wait=lambda label=label: busy.append(label)):
            pass
    checks = {
        "both_killed": all(k["exit"] == -9 for k in killed),
        "nothing_moved": catalog.current() == serving and catalog.moves() == before,
        "no_lock_left_held": not busy,
    }
    return len(killed), checks | moved_once(catalog, before, consolidated(catalog))


SCENARIOS = [
    Scenario("s3-transient-errors", "bundle uploads: EndpointConnectionError twice", s3_transient),
    Scenario("s3-lasting-outage", "bundle uploads: EndpointConnectionError on every try", s3_outage),
    Scenario("s3-read-timeout", "adapter downloads: ReadTimeoutError on every try, then twice", s3_timeout),
    Scenario("db-dropped-at-commit", "registry commit: OperationalError (connection reset) once", db_dropped),
    Scenario("disk-full-writing-bundle", "write_bundle: OSError ENOSPC", disk_full),
    Scenario(
        "worker-killed", "consolidate child SIGKILLed in the merge, then after the upload", worker_killed
    ),
]


def run_faults(catalog: Catalog) -> list[dict]:
    consolidated(catalog)  # the valid adapters' first bundle: every scenario moves from there
    results = []
    for scenario in SCENARIOS:
        start = time.perf_counter()
        try:
            injected, checks = scenario.run(catalog)
            error = None
        except Exception as exc:  # noqa: BLE001 - a scenario that crashes did not survive; reported
            injected, checks, error = 0, {}, f"{type(exc).__name__}: {exc}"
        survived = error is None and bool(checks) and all(checks.values())
        seconds = round(time.perf_counter() - start, 1)
        results.append(
            {"fault": scenario.name, "what": scenario.what, "injected": injected, "survived": survived,
             "checks": checks, "error": error, "seconds": seconds}
        )  # fmt: skip
        log(f"{scenario.name}: injected {injected}, survived {survived}")
    return results


# load and report


def run_load_section(root: Path, seconds: float, rate: float) -> dict:
    from bench.load import load_under_publishing

    return load_under_publishing(root / "load", seconds=seconds, rate=rate).to_dict()


def totals(inputs: dict, fault_results: list[dict], load: dict | None, final: dict) -> dict:
    out = {
        "inputs_tried": inputs["tried"],
        "inputs_refused": inputs["refused"],
        "faults_injected": sum(1 for f in fault_results if f["injected"]),
        "faults_survived": sum(1 for f in fault_results if f["survived"]),
        "lost_or_inconsistent": len(final["problems"]) + inputs["pickle_executed"],
    }
    if load is not None:
        consistency = load["consistency"]
        out |= {
            "requests_served": load["served"],
            "request_errors": load["server_errors"] + load["transport_errors"],
            "p99_ms": load["latency"].get("p99_ms"),
            "lost_or_inconsistent": out["lost_or_inconsistent"] + consistency["inconsistent"],
        }
    return out


def run_bench(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    delays = (
        faults.retry_delays(args.retry_delay) if args.retry_delay is not None else contextlib.nullcontext()
    )
    with tempfile.TemporaryDirectory(prefix="hydracat-bench-reliability-") as tmp, delays:
        root = Path(tmp)
        with throwaway_catalog(root) as catalog:
            log("inputs: the bad-input corpus through `hydracat merge` and sync-catalog ...")
            inputs = run_inputs(catalog)
            log(f"inputs: {inputs['refused']} of {inputs['tried']} refused")
            fault_results = run_faults(catalog)
            final = faults.audit(catalog.database_url, catalog.store)
            load = None
            if args.load_seconds > 0:
                log(f"load: {args.load_seconds:g} s at {args.rate:g}/s while consolidate publishes ...")
                load = run_load_section(root, args.load_seconds, args.rate)
    report = {
        "machine": host_info(),
        "config": {
            "retry_delays_s": [args.retry_delay] * 3 if args.retry_delay is not None else [1, 4, 16],
            "load_seconds": args.load_seconds,
            "rate": args.rate,
            "setup": "temporary folder: SQLite registry, moto S3 server on loopback, temporary Prefect "
            "server, tiny random Llama base and LoRAs (bench.synthetic)",
            "total_s": round(time.perf_counter() - start, 1),
        },
        "inputs": inputs,
        "faults": fault_results,
        "load": load if load is not None else {"skipped": "--load-seconds 0"},
        "audit": final,
        "totals": totals(inputs, fault_results, load, final),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(summary(report))
    log(f"wrote {out}")
    return 0


def summary(report: dict) -> str:
    t = report["totals"]
    lines = [
        f"inputs: {t['inputs_refused']}/{t['inputs_tried']} refused",
        f"faults: {t['faults_survived']}/{len(report['faults'])} survived ({t['faults_injected']} injected)",
        *(
            f"  {f['fault']:<26} {'survived' if f['survived'] else 'FAILED'}  {f['seconds']:.1f} s"
            for f in report["faults"]
        ),  # fmt: skip
    ]
    if "requests_served" in t:
        lines.append(
            f"load: {t['requests_served']} served, {t['request_errors']} errors, p99 {t['p99_ms']:.1f} ms"
        )
    lines.append(f"lost or inconsistent records: {t['lost_or_inconsistent']}")
    return "\n".join(lines)


def add_reliability_bench(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "reliability", help="bad inputs, injected faults and HTTP load on a throwaway catalog"
    )
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument(
        "--load-seconds", type=float, default=60.0, help="HTTP load duration, 0: no load (default 60)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="HTTP requests per second (default 200)")
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=None,
        help="seconds between retries (default: the flows' 1, 4, 16 s)",
    )
    parser.set_defaults(handler=run_bench)
