"""`hydracat bench registry`: current-bundle lookups at catalog scale, against MLflow's model registry.

A fresh SQLite registry in a temporary folder is migrated to head and bulk-populated with T tasks
and A adapter versions (SQLAlchemy core `insert()` executemany on the registry's own tables: the
ORM API would take minutes at this volume and is not what is measured). Tasks are grouped five to
a bundle; every task's "current" alias points at its bundle, whose member for the task is that
task's newest adapter version, so `Registry.current_bundle(task)` returns its full shape.

Measured, over random tasks (seeded):
- `Registry.current_bundle(task)` in-process;
- `GET /v1/tasks/{task}/bundle` over loopback: the FastAPI app under uvicorn in a child process,
  requests paced open-loop at --rate per second with httpx (bounded by --queries and --max-seconds);
- the peer, MLflow: a SQLite tracking/registry store with one registered model per task (one
  version each, alias "current"), then `MlflowClient.get_model_version_by_alias(name, "current")`
  in-process. Populating goes through `MlflowClient`; it stops early once it passes
  --mlflow-budget seconds, and the report says how many models were made.
"""

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.host import child_env
from bench.load import Call, latency_stats, send_paced
from flows.processes import free_port, stop_process, wait_until_answering

SEED = 1234
BASE_MODEL = "meta-llama/Llama-3.2-1B"
BASE_REVISION = "main"
TASKS_PER_BUNDLE = 5
WARMUP = 50
CHUNK = 5000


# helpers


def random_names(names: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(names) for _ in range(count)]


def log(message: str) -> None:
    print(f"[bench registry] {message}", file=sys.stderr, flush=True)


# populating our registry


def task_name(i: int) -> str:
    return f"task-{i:05d}"


def sha_of(name: str, version: int) -> str:
    return hashlib.sha256(f"{name}:{version}".encode()).hexdigest()


def versions_of(task: int, tasks: int, adapters: int) -> int:
    """Adapter i belongs to task i % tasks as version i // tasks + 1: how many versions `task` has."""
    return (adapters - task + tasks - 1) // tasks


def adapter_id(task: int, version: int, tasks: int) -> int:
    return (version - 1) * tasks + task + 1


def bundle_manifest(bundle_id: str, members: list[dict]) -> dict:
    return {
        "schema_version": 1,
        "bundle_id": bundle_id,
        "method": "hydraopt",
        "params": {"heads": len(members), "rank": 16},
        "base_model": {"name": BASE_MODEL, "revision": BASE_REVISION},
        "members": members,
        "metrics": {m["task"]: {"relative_error": 0.01 * (m["head"] + 1)} for m in members},
        "storage": {"bundle_bytes": 10_000_000, "source_bytes": 40_000_000, "ratio": 0.25},
    }


def populate_registry(engine, tasks: int, adapters: int) -> dict:
    """Bulk-insert base model, tasks, adapters, bundles, members, aliases and alias events."""
    from sqlalchemy import insert

    from registry.models import (
        CURRENT_ALIAS,
        Adapter,
        AliasEvent,
        BaseModel,
        Bundle,
        BundleMember,
        Task,
        TaskAlias,
        utcnow,
    )

    now = utcnow()
    start = time.perf_counter()

    def bulk(connection, model, rows: list[dict]) -> None:
        for i in range(0, len(rows), CHUNK):
            connection.execute(insert(model.__table__), rows[i : i + CHUNK])

    adapter_rows = []
    for i in range(adapters):
        task, version = i % tasks, i // tasks + 1
        name = f"{task_name(task)}-adapter"
        adapter_rows.append(
            {
                "id": i + 1, "name": name, "version": str(version), "base_model_id": 1,
                "adapter_type": "lora", "sha256": sha_of(name, version),
                "uri": f"s3://hydracat-bench/adapters/{name}/{version}", "rank": 16, "alpha": 32.0,
                "targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "status": "active",
                "quarantine_reason": None, "created_at": now,
            }
        )  # fmt: skip
    bundle_rows, member_rows, alias_rows, event_rows = [], [], [], []
    for b, first in enumerate(range(0, tasks, TASKS_PER_BUNDLE)):
        bundle_id = f"bundle-{b:05d}"
        members = []
        for head, task in enumerate(range(first, min(first + TASKS_PER_BUNDLE, tasks))):
            version = versions_of(task, tasks, adapters)
            name = f"{task_name(task)}-adapter"
            members.append(
                {
                    "adapter_id": adapter_id(task, version, tasks), "name": name, "version": str(version),
                    "task": task_name(task), "sha256": sha_of(name, version), "head": head,
                }
            )  # fmt: skip
            member_rows.append(
                {
                    "id": task + 1, "bundle_id": bundle_id, "adapter_id": adapter_id(task, version, tasks),
                    "task_id": task + 1, "head": head,
                }
            )  # fmt: skip
            alias_rows.append(
                {"id": task + 1, "task_id": task + 1, "alias": CURRENT_ALIAS, "bundle_id": bundle_id,
                 "updated_at": now}
            )  # fmt: skip
            event_rows.append(
                {"id": task + 1, "task_id": task + 1, "alias": CURRENT_ALIAS, "action": "move",
                 "from_bundle_id": None, "to_bundle_id": bundle_id, "reason": "bench populate",
                 "actor": "bench", "created_at": now}
            )  # fmt: skip
        bundle_rows.append(
            {
                "id": bundle_id, "base_model_id": 1, "uri": f"s3://hydracat-bench/bundles/{bundle_id}",
                "manifest": bundle_manifest(bundle_id, members), "created_at": now,
            }
        )  # fmt: skip
    with engine.begin() as connection:
        connection.execute(
            insert(BaseModel.__table__), [{"id": 1, "name": BASE_MODEL, "revision": BASE_REVISION}]
        )
        bulk(connection, Task, [{"id": t + 1, "name": task_name(t)} for t in range(tasks)])
        bulk(connection, Adapter, adapter_rows)
        bulk(connection, Bundle, bundle_rows)
        bulk(connection, BundleMember, member_rows)
        bulk(connection, TaskAlias, alias_rows)
        bulk(connection, AliasEvent, event_rows)
    seconds = time.perf_counter() - start
    return {
        "method": "SQLAlchemy core insert() executemany on the registry's own tables (one transaction, "
        f"chunks of {CHUNK}), schema from the alembic migrations at head",
        "seconds": seconds,
        "rows": {
            "tasks": tasks,
            "adapters": adapters,
            "bundles": len(bundle_rows),
            "bundle_members": len(member_rows),
            "task_aliases": len(alias_rows),
            "alias_events": len(event_rows),
        },
        "layout": f"{TASKS_PER_BUNDLE} tasks per bundle; adapter i is version i // tasks + 1 of task "
        "i % tasks; each task's current bundle serves its newest version",
    }


def check_registry(engine, registry, tasks: int) -> dict:
    """Every task has a current alias; one full current_bundle shape checked."""
    from sqlalchemy import func, select

    from registry.models import CURRENT_ALIAS, TaskAlias

    with engine.connect() as connection:
        aliased = connection.scalar(
            select(func.count()).select_from(TaskAlias).where(TaskAlias.alias == CURRENT_ALIAS)
        )
    sample = registry.current_bundle(task_name(tasks - 1))
    keys = {"task", "alias", "bundle_id", "bundle_uri", "base_model", "head", "adapter"}
    keys |= {"task_adapter_uri", "updated_at", "manifest"}
    if aliased != tasks or set(sample) != keys or not sample["manifest"]["members"]:
        raise RuntimeError(f"populated registry is incomplete: {aliased}/{tasks} aliases, sample {sample}")
    return {"tasks_with_current_alias": aliased, "sample": sample}


# measurements


def time_calls(call, names: list[str]) -> list[float]:
    for name in names[:WARMUP]:
        call(name)
    samples = []
    for name in names:
        start = time.perf_counter()
        call(name)
        samples.append(time.perf_counter() - start)
    return samples


def start_server(db_url: str, port: int, probe_task: str, timeout_s: float = 60.0) -> subprocess.Popen:
    env = child_env()
    command = [sys.executable, "-m", "bench.registry", "--serve", db_url, "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/tasks/{probe_task}/bundle"
    return wait_until_answering(process, url, "the registry server", timeout_s, poll_s=0.1)


def paced_requests(base_url: str, names: list[str], rate: float, max_seconds: float) -> dict:
    """GET the current bundle of each of `names`, paced open-loop (`bench.load.send_paced`).

    An error is a transport error, a status other than 200, or an answer for another task.
    """
    count = min(len(names), max(1, int(rate * max_seconds)))
    warmup = [Call("current", name) for name in names[: min(WARMUP, len(names))]]
    sent = asyncio.run(send_paced(base_url, lambda i: Call("current", names[i]), count, rate, warmup=warmup))
    ok = [r for r in sent.records if r.status == 200 and r.body and r.body["task"] == r.target]
    errors = [f"{r.target}: {r.error or f'HTTP {r.status}'}" for r in sent.records if r.status != 200]
    errors += [f"{r.target}: answered for {r.body['task']}" for r in sent.records if r.body and r not in ok]
    lags = [r.lag_s for r in sent.records]
    return {
        "latencies": [r.latency_s for r in ok],
        "requests": count,
        "completed": len(ok),
        "errors": len(errors) + sent.unanswered,
        "error_samples": errors[:5],
        "duration_s": sent.duration_s,
        "achieved_rate": len(ok) / sent.duration_s if sent.duration_s > 0 else 0.0,
        "send_lag_p99_ms": latency_stats(lags)["p99_ms"] if lags else None,
        "sent": sent.sent,
    }


def bench_http(db_url: str, names: list[str], rate: float, max_seconds: float) -> dict:
    port = free_port()
    process = start_server(db_url, port, names[0])
    try:
        outcome = paced_requests(f"http://127.0.0.1:{port}", names, rate, max_seconds)
    finally:
        stop_process(process, timeout_s=10)
    latencies = outcome.pop("latencies")
    stats = latency_stats(latencies) if latencies else {"n": 0}
    return {**stats, **outcome, "target_rate": rate, "port": port}


# MLflow, the peer


def quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "sqlalchemy.engine"):
        logging.getLogger(name).setLevel(logging.ERROR)


def bench_mlflow(folder: Path, models: int, queries: int, budget_s: float, seed: int) -> dict:
    quiet_mlflow()
    import mlflow
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    start = time.perf_counter()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models(max_results=1)  # creates and migrates the store
    init_s = time.perf_counter() - start
    names: list[str] = []
    start = time.perf_counter()
    for i in range(models):
        name = f"{task_name(i)}-adapter"
        client.create_registered_model(name, tags={"task": task_name(i)})
        version = client.create_model_version(
            name, f"s3://hydracat-bench/adapters/{name}/1", tags={"sha256": sha_of(name, 1)}
        )
        client.set_registered_model_alias(name, "current", version.version)
        names.append(name)
        if (i + 1) % 500 == 0:
            log(f"mlflow: {i + 1}/{models} models ({time.perf_counter() - start:.0f} s)")
        if time.perf_counter() - start > budget_s and len(names) < models:
            log(f"mlflow: populate passed its {budget_s:.0f} s budget, stopping at {len(names)} models")
            break
    populate_s = time.perf_counter() - start
    sample = client.get_model_version_by_alias(names[-1], "current")
    if str(sample.version) != "1" or not sample.source:
        raise RuntimeError(f"mlflow alias lookup returned {sample}")
    samples = time_calls(
        lambda name: client.get_model_version_by_alias(name, "current"), random_names(names, queries, seed)
    )
    return {
        "populate": {
            "method": "MlflowClient: create_registered_model, create_model_version(name, source, tags), "
            "set_registered_model_alias(name, 'current', version); one version per model",
            "seconds": populate_s,
            "store_init_s": init_s,
            "models_requested": models,
            "models": len(names),
            "scaled_down": len(names) < models,
            "budget_s": budget_s,
            "per_model_ms": populate_s / len(names) * 1000,
        },
        "latency": latency_stats(samples),
        "mlflow_version": mlflow.__version__,
        "tracking_uri": "sqlite:///<tmp>/mlflow.db",
    }


# the bench


def machine_info() -> dict:
    import fastapi
    import httpx
    import sqlalchemy
    import uvicorn

    from bench.host import host_info

    return host_info() | {
        "sqlalchemy_version": sqlalchemy.__version__,
        "fastapi_version": fastapi.__version__,
        "uvicorn_version": uvicorn.__version__,
        "httpx_version": httpx.__version__,
    }


def table(results: list[dict]) -> str:
    header = f"{'lookup':<34} {'n':>6} {'p50_ms':>8} {'p99_ms':>8} {'mean_ms':>8} {'max_ms':>8} {'errors':>6}"
    lines = [header, "-" * len(header)]
    for r in results:
        errors = r.get("errors", 0)
        lines.append(
            f"{r['name']:<34} {r['n']:>6} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['mean_ms']:>8.3f} "
            f"{r['max_ms']:>8.3f} {errors:>6}"
        )
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    from registry.api import Registry
    from registry.db import make_engine, upgrade

    if args.adapters < args.tasks:
        raise SystemExit("--adapters must be at least --tasks (every task needs an adapter version)")
    total_start = time.perf_counter()
    results: list[dict] = []
    populate: dict = {}
    with tempfile.TemporaryDirectory(prefix="hydracat-bench-registry-") as tmp:
        folder = Path(tmp)
        db_url = f"sqlite:///{folder / 'registry.db'}"
        engine = make_engine(db_url)
        start = time.perf_counter()
        upgrade(engine, "head")
        migrate_s = time.perf_counter() - start
        log(f"populating {args.tasks} tasks, {args.adapters} adapter versions ...")
        populate["hydracat"] = {
            **populate_registry(engine, args.tasks, args.adapters),
            "migrate_s": migrate_s,
        }
        log(f"populated in {populate['hydracat']['seconds']:.1f} s")
        registry = Registry(engine)
        check = check_registry(engine, registry, args.tasks)
        tasks = [task_name(t) for t in range(args.tasks)]
        names = random_names(tasks, args.queries, args.seed)

        log(f"in-process: {args.queries} current_bundle calls ...")
        samples = time_calls(registry.current_bundle, names)
        results.append({"name": "hydracat current_bundle (in-process)", "impl": "hydracat",
                        "surface": "python", **latency_stats(samples)})  # fmt: skip
        log(f"in-process p50 {results[-1]['p50_ms']:.3f} ms, p99 {results[-1]['p99_ms']:.3f} ms")
        engine.dispose()

        log(f"HTTP: {args.queries} requests paced at {args.rate:g}/s ...")
        http = bench_http(
            db_url, random_names(tasks, args.queries, args.seed + 1), args.rate, args.max_seconds
        )
        if http["n"] == 0:
            raise RuntimeError(f"no HTTP request succeeded: {http['error_samples']}")
        results.append({"name": f"hydracat GET bundle (HTTP @{args.rate:g}/s)", "impl": "hydracat",
                        "surface": "http", **http})  # fmt: skip
        log(f"HTTP p50 {http['p50_ms']:.3f} ms, p99 {http['p99_ms']:.3f} ms, "
            f"{http['achieved_rate']:.1f}/s, {http['errors']} errors")  # fmt: skip

        mlflow_info = None
        if not args.skip_mlflow:
            models = args.mlflow_models if args.mlflow_models is not None else args.tasks
            log(f"mlflow: populating {models} registered models (budget {args.mlflow_budget:g} s) ...")
            mlflow_info = bench_mlflow(folder, models, args.queries, args.mlflow_budget, args.seed + 2)
            populate["mlflow"] = mlflow_info["populate"]
            results.append({"name": "mlflow get_model_version_by_alias", "impl": "mlflow",
                            "surface": "python", **mlflow_info["latency"]})  # fmt: skip
            log(f"mlflow p50 {results[-1]['p50_ms']:.3f} ms, p99 {results[-1]['p99_ms']:.3f} ms")

    ours, served = results[0], results[1]
    theirs = results[2] if mlflow_info else None
    ratios = {}
    if theirs:
        ratios = {
            "hydracat_p99_over_mlflow_p99": ours["p99_ms"] / theirs["p99_ms"],
            "hydracat_p50_over_mlflow_p50": ours["p50_ms"] / theirs["p50_ms"],
            "hydracat_mean_over_mlflow_mean": ours["mean_ms"] / theirs["mean_ms"],
        }
    targets = {
        "p99_at_most_one_third_of_mlflow": ratios["hydracat_p99_over_mlflow_p99"] <= 1 / 3
        if theirs
        else None,
        "http_p99_under_20ms_at_rate": served["p99_ms"] < 20.0,
        "http_zero_errors": served["errors"] == 0,
        "http_rate_achieved": served["achieved_rate"] >= 0.95 * args.rate,
    }
    report = {
        "machine": {
            **machine_info(),
            **({"mlflow_version": mlflow_info["mlflow_version"]} if mlflow_info else {}),
        },
        "config": {
            "tasks": args.tasks,
            "adapters": args.adapters,
            "queries": args.queries,
            "rate": args.rate,
            "max_seconds": args.max_seconds,
            "seed": args.seed,
            "warmup": WARMUP,
            "skip_mlflow": args.skip_mlflow,
            "mlflow_models": populate.get("mlflow", {}).get("models"),
            "mlflow_budget_s": args.mlflow_budget,
            "database": "SQLite file (WAL) in a temporary folder, fresh per run",
            "timing": "perf_counter around each call/request; first 50 lookups are warm-up, not counted; "
            "percentiles are inclusive quantiles over all samples",
            "http": "uvicorn (one worker, child process) on 127.0.0.1; httpx.AsyncClient with keep-alive, "
            "open-loop pacing (request i sent at t0 + i/rate); latency = send to parsed response",
            "mlflow": "in-process MlflowClient on a SQLite tracking/registry store, the same kind of "
            "store and surface as hydracat's in-process lookup",
            "total_s": time.perf_counter() - total_start,
        },
        "populate": populate,
        "check": check,
        "results": results,
        "ratios": ratios,
        "targets": targets,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(results))
    print(f"HTTP achieved {served['achieved_rate']:.1f}/s of {args.rate:g}/s, {served['errors']} errors")
    for name, info in populate.items():
        what = f"{info['models']} models" if name == "mlflow" else f"{info['rows']['adapters']} adapters"
        print(f"populate {name}: {info['seconds']:.1f} s ({what})")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    print("targets: " + ", ".join(f"{k}={v}" for k, v in targets.items()))
    log(f"wrote {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks (default 10000)")
    parser.add_argument("--adapters", type=int, default=50_000, help="adapter versions (default 50000)")
    parser.add_argument("--queries", type=int, default=2000, help="lookups per surface (default 2000)")
    parser.add_argument("--rate", type=float, default=200.0, help="HTTP requests per second (default 200)")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="HTTP run at most this long (default 60)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"random task choice (default {SEED})")
    parser.add_argument("--skip-mlflow", action="store_true", help="no MLflow peer (needs no mlflow)")
    parser.add_argument("--mlflow-models", type=int, default=None, help="MLflow models (default: --tasks)")
    parser.add_argument(
        "--mlflow-budget", type=float, default=300.0, help="stop populating MLflow after this many s (300)"
    )


def add_registry_bench(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "registry", help="time current-bundle lookups (in-process, HTTP) against MLflow's alias lookup"
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_bench)


def serve_main(argv: list[str] | None = None) -> int:
    """The HTTP server child: the registry app on 127.0.0.1:PORT over the database at URL."""
    parser = argparse.ArgumentParser(description="registry server for the bench (internal)")
    parser.add_argument("--serve", required=True, metavar="URL")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    from registry.api import Registry
    from registry.db import make_engine
    from registry.http import create_app

    app = create_app(Registry(make_engine(args.serve)), None)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
