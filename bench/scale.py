"""`hydracat bench scale`: the real flows (sync-catalog, consolidate, nightly) at catalog scale.

The catalog, built once into --cache (default .cache/bench-scale; not timed): G base models, all the
tiny random Llama of `bench.synthetic.build_tiny_base` installed under G names (``scale-base-0000``,
..., one symlink each in HYDRACAT_MODELS_DIR), and N PEFT LoRAs at its attention shapes, rank 4:
adapter i is ``task-{i:06d}`` version 1 on base model i % G. The adapters of one base model share
their A factors (seeded by the base model) and differ in B (seeded by the adapter), so HydraOpt
with one head per task and r' = 4 rebuilds each of them exactly (retention 1.0): every group passes
the weight-space gate (the adapters have no eval.jsonl) and publishes.

Every run starts fresh, in a work folder (temporary, or --workdir): the registry (a SQLite file
there, or a new schema of the PostgreSQL --database-url, dropped afterwards) migrated to head; the
object store (a folder there, or a new prefix under the --store-url S3 bucket, emptied afterwards)
with the N adapters uploaded (8 threads); a Prefect server (``prefect server start``, a child
process logging to prefect-server.log there) on a copy of the migrated template database of
`flows.prefect_setup.template_database` (kept in the environment's PREFECT_HOME; the server and the
flows get a PREFECT_HOME of their own in the work folder).

Measured: a child process (its log: driver.log in the work folder) calls the flows in-process
against that server, as a user's script would, phase after phase, each timed with perf_counter:

- ``first_sync``: ``sync_catalog()`` registers the N adapters;
- ``first_consolidate``: ``consolidate(rank=4)`` merges and publishes the G groups;
- ``nightly_no_change``: ``nightly(rank=4)`` with nothing new: no bundle, no alias move;
- ``watch_no_change``: ``sync_catalog()`` with nothing new, what the `watch` deployment runs every
  few minutes: one listing and one query;
- ``nightly_one_changed``: version 2 of task-000000 (same A, new B) uploaded, then ``nightly(rank=4)``:
  one bundle, its group's;
- ``nightly_new_group``: base model ``scale-base-new`` installed and 5 adapters on it uploaded, then
  ``nightly(rank=4)``: one bundle.

Per phase: bundles published and alias moves (rows added to the registry's ``bundles`` and
``alias_events`` tables; the flows' return values are not read), adapter versions registered; lines
of the Prefect server's log saying it dropped an event ("Subscription queue is full") or refused one
("Refusing to publish event") while the phase ran (the server logs them as it handles the events, so
one logged just after a phase ends counts in the next; ``prefect`` counts the whole log once the
server stopped); WARNING or worse records logged in the driver. Peak RSS: the driver's ``ru_maxrss``,
and the Prefect server's VmHWM (summed over its process tree) just before it is stopped, in MiB.

Targets (the issue's), checked when the run is at their size (``targets`` is empty otherwise): at
10,000 adapters / 100 groups, first sync + first consolidate <= 180 s, nightly with no change
<= 10 s, with one changed adapter <= 20 s, no dropped or refused Prefect event, the peak RSS of the
driver and of the server <= 2 GiB; at 100,000 / 1,000, the first nightly (first sync + first
consolidate) <= 30 min and nightly with no change <= 60 s.
"""

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlparse

import psutil
import torch
from sqlalchemy.engine import Engine
from tqdm import tqdm

from bench.host import child_env, host_info
from bench.synthetic import build_tiny_base, llama_attention_shapes
from flows.processes import free_port, stop_process, wait_until_answering
from hydraopt.formats.layout import adapter_key
from hydraopt.formats.peft_lora import write_peft_lora
from registry.store import ObjectStore

RANK = 4
SHAPES = llama_attention_shapes(layers=2, hidden=64, kv_out=32)  # the modules of build_tiny_base
CHANGED_TASK = 0
NEW_BASE, NEW_ADAPTERS = "scale-base-new", 5
UPLOAD_THREADS = 8
DROPPED, REFUSED = "Subscription queue is full", "Refusing to publish event"
SERVER_LOG, DRIVER_LOG = "prefect-server.log", "driver.log"
STDERR_FD = 2
TARGET_SIZES = {"10000/100": (10_000, 100), "100000/1000": (100_000, 1_000)}


def log(message: str) -> None:
    print(f"[bench scale] {message}", file=sys.stderr, flush=True)


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


# the catalog


def base_name(group: int) -> str:
    return f"scale-base-{group:04d}"


def task_name(i: int) -> str:
    return f"task-{i:06d}"


def seed_of(*parts: object) -> int:
    """A torch seed from `parts`, the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


@functools.cache
def shared_a(base: str) -> dict[str, torch.Tensor]:
    """The A factors of every adapter on base model `base`."""
    generator = torch.Generator().manual_seed(seed_of("A", base))
    factors = {}
    for module, (_, d_in) in SHAPES.items():
        factors[module] = torch.randn(RANK, d_in, generator=generator) / d_in**0.5
    return factors


def write_adapter(out: Path, base: str, b_seed: int) -> Path:
    """A PEFT LoRA folder on `base`: the base model's shared A, B from `b_seed` (kept when present)."""
    if out.is_dir():
        return out
    generator = torch.Generator().manual_seed(b_seed)
    modules = {
        module: (shared_a(base)[module], torch.randn(d_out, RANK, generator=generator) / RANK**0.5)
        for module, (d_out, _) in SHAPES.items()
    }
    targets = sorted({module.rsplit(".", 1)[-1] for module in SHAPES})
    template = {"base_model_name_or_path": base, "task_type": "CAUSAL_LM", "target_modules": targets}
    staging = out.with_name(f"{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    write_peft_lora(staging, modules, RANK, template, torch.float32)
    staging.rename(out)  # whole or not at all
    return out


def base_folder(cache: Path) -> Path:
    return cache / "tiny-llama"


def catalog_folder(cache: Path, groups: int) -> Path:
    return cache / f"groups-{groups}"


def build_catalog(cache: Path, adapters: int, groups: int) -> dict[str, Path]:
    """{store key: folder} of the N adapters, written into the cache where missing."""
    folder, found = catalog_folder(cache, groups) / "v1", {}
    for i in tqdm(range(adapters), desc="adapters", unit="adapter", file=sys.stderr):
        name = task_name(i)
        found[adapter_key(name, "1")] = write_adapter(folder / name, base_name(i % groups), seed_of("B", i))
    return found


def changed_adapter(cache: Path, groups: int) -> dict[str, Path]:
    """Version 2 of task-000000: its base model's A, a new B."""
    name = task_name(CHANGED_TASK)
    folder = catalog_folder(cache, groups) / "v2" / name
    return {adapter_key(name, "2"): write_adapter(folder, base_name(CHANGED_TASK % groups), seed_of(name, 2))}


def new_group_adapters(cache: Path) -> dict[str, Path]:
    """The adapters `new-task-0` ... on base model `scale-base-new`."""
    names = [f"new-task-{i}" for i in range(NEW_ADAPTERS)]
    return {adapter_key(n, "1"): write_adapter(cache / "new-group" / n, NEW_BASE, seed_of(n)) for n in names}


def install_base_model(models_dir: Path, name: str, base: Path) -> None:
    """`name` as an installed base model folder: a symlink to the tiny Llama."""
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / name).symlink_to(base.resolve(), target_is_directory=True)


def upload(store: ObjectStore, adapters: dict[str, Path]) -> None:
    """Every file of every adapter folder under its key (`ObjectStore.put_file`, 8 threads)."""
    files = [(f"{key}/{path.name}", path) for key, folder in adapters.items() for path in folder.iterdir()]
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        done = pool.map(lambda file: store.put_file(*file), files)
        for _ in tqdm(done, total=len(files), desc="upload", unit="file", file=sys.stderr):
            pass


# the registry and the store of one run


def schema_url(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{urlencode({'options': f'-csearch_path={schema}'})}"


@contextlib.contextmanager
def registry_database(url: str | None) -> Iterator[dict[str, str]]:
    """Registry settings: none (the work folder's SQLite file), or a new schema of the PostgreSQL
    database `url`, dropped afterwards."""
    if url is None:
        yield {}
        return
    from sqlalchemy import make_url

    from registry.db import make_engine

    if make_url(url).get_backend_name() != "postgresql":
        raise SystemExit("--database-url: a PostgreSQL URL (the default is a SQLite file in the work folder)")
    schema = f"hydracat_scale_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield {"database_url": schema_url(url, schema)}
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextlib.contextmanager
def object_store(url: str | None, endpoint: str | None) -> Iterator[dict[str, str]]:
    """Store settings: none (the work folder's), or a new prefix in the S3 bucket of `url` (the
    bucket created if missing), emptied afterwards."""
    endpoint_setting = {"s3_endpoint_url": endpoint} if endpoint else {}
    if url is None:
        yield endpoint_setting
        return
    import boto3
    from botocore.exceptions import ClientError

    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SystemExit("--store-url: s3://bucket[/prefix] (the default is a folder in the work folder)")
    bucket = parsed.netloc
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
    prefix = "/".join(filter(None, [parsed.path.strip("/"), f"hydracat-scale-{uuid.uuid4().hex[:12]}"]))
    try:
        yield {"store_url": f"s3://{bucket}/{prefix}"} | endpoint_setting
    finally:
        objects = boto3.resource("s3", endpoint_url=endpoint).Bucket(bucket).objects
        objects.filter(Prefix=f"{prefix}/").delete()  # in batches of 1000


def migrate(database_url: str) -> None:
    from registry.db import make_engine, upgrade

    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()


# the Prefect server


@contextlib.contextmanager
def prefect_server(
    workdir: Path, template: Path, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`prefect server start` on a free port over a copy of the Prefect database `template`, logging
    to SERVER_LOG in `workdir`; yields (process, API URL) once /api/health answers, stops it afterwards."""
    from flows.prefect_setup import PrefectStartError, copy_database, startup_timeout_s

    database = copy_database(template, Path(env["PREFECT_HOME"]) / "prefect.db")
    url = f"http://127.0.0.1:{free_port()}"
    server_env = env | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
        "PREFECT_UI_API_URL": f"{url}/api",  # as `hydracat serve` starts it
    }
    port = url.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port]
    with (workdir / SERVER_LOG).open("w") as out:
        process = subprocess.Popen(command, env=server_env, stdout=out, stderr=subprocess.STDOUT)
    timeout_s = startup_timeout_s()
    try:
        wait_until_answering(process, f"{url}/api/health", "the Prefect server", timeout_s)
    except TimeoutError as error:
        raise PrefectStartError(timeout_s) from error
    except RuntimeError as error:
        raise RuntimeError(f"{error}\n{tail(workdir / SERVER_LOG)}") from error
    try:
        yield process, f"{url}/api"
    finally:
        stop_process(process)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of process `pid` and its children, summed, in MiB."""
    root = psutil.Process(pid)
    return sum(high_water_kb(process.pid) for process in [root, *root.children(recursive=True)]) / 1024


def high_water_kb(pid: int) -> int:
    """VmHWM of process `pid` in KiB; 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


def server_log_counts(path: Path) -> dict[str, int]:
    """Dropped and refused events, as lines of the Prefect server's log."""
    text = path.read_text(errors="replace")
    return {"dropped_events": text.count(DROPPED), "refused_events": text.count(REFUSED)}


# the driver: the flows, in a child process


class WarningCount(logging.Handler):
    """Counts WARNING and worse records."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def registry_counts(engine: Engine) -> dict[str, int]:
    from sqlalchemy import func, select

    from registry.models import Adapter, AliasEvent, Bundle

    with engine.connect() as connection:
        return {
            name: connection.scalar(select(func.count()).select_from(table))
            for name, table in (("bundles", Bundle), ("alias_events", AliasEvent), ("adapters", Adapter))
        }


def measure(run: Callable[[], object], engine: Engine, server_log: Path, warnings: WarningCount) -> dict:
    """Time `run`; what it added to the registry, the server's log and the driver's warnings."""
    rows, events, warned = registry_counts(engine), server_log_counts(server_log), warnings.count
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    rows_after, events_after = registry_counts(engine), server_log_counts(server_log)
    return {
        "seconds": seconds,
        "bundles_published": rows_after["bundles"] - rows["bundles"],
        "alias_moves": rows_after["alias_events"] - rows["alias_events"],
        "adapters_registered": rows_after["adapters"] - rows["adapters"],
        **{name: events_after[name] - events[name] for name in events},
        "driver_warnings": warnings.count - warned,
    }


def run_phases(cache: Path, groups: int, server_log: Path) -> dict:
    """The five phases against the catalog of the HYDRACAT_* environment and PREFECT_API_URL."""
    from flows.catalog import sync_catalog
    from flows.consolidate import consolidate
    from flows.nightly import nightly
    from flows.settings import FlowSettings
    from registry.db import make_engine
    from registry.store import open_store

    warnings = WarningCount()
    logging.getLogger().addHandler(warnings)  # after Prefect set up its logging on import
    settings = FlowSettings.from_env()
    store = open_store(settings.registry)

    def add_new_group() -> None:
        install_base_model(settings.models_dir, NEW_BASE, base_folder(cache))
        upload(store, new_group_adapters(cache))

    steps = [
        ("first_sync", None, sync_catalog),
        ("first_consolidate", None, functools.partial(consolidate, rank=RANK)),
        ("nightly_no_change", None, functools.partial(nightly, rank=RANK)),
        ("watch_no_change", None, sync_catalog),
        ("nightly_one_changed", functools.partial(upload, store, changed_adapter(cache, groups)),
         functools.partial(nightly, rank=RANK)),
        ("nightly_new_group", add_new_group, functools.partial(nightly, rank=RANK)),
    ]  # fmt: skip
    engine = make_engine(settings.registry.database_url)
    phases = {}
    try:
        for name, prepare, flow in steps:
            if prepare is not None:
                prepare()
            phases[name] = measure(flow, engine, server_log, warnings)
            print(f"[bench scale] {name}: {phase_line(phases[name])}", flush=True)
    finally:
        engine.dispose()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"phases": phases, "peak_rss_mb": peak_kb / 1024, "driver_warnings": warnings.count}


def phase_line(phase: dict) -> str:
    return (
        f"{phase['seconds']:.1f} s, {phase['bundles_published']} bundles, "
        f"{phase['alias_moves']} alias moves, {phase['adapters_registered']} registered"
    )


def run_driver(workdir: Path, env: dict[str, str], cache: Path, groups: int) -> dict:
    """`python -m bench.scale` (`driver_main`): its progress lines on our stderr, its own log in
    DRIVER_LOG; returns what it measured."""
    out = workdir / "phases.json"
    command = [sys.executable, "-m", "bench.scale", "--cache", str(cache.resolve()), "--groups", str(groups),
               "--server-log", str(workdir / SERVER_LOG), "--out", str(out)]  # fmt: skip
    with (workdir / DRIVER_LOG).open("w") as driver_log:
        run = subprocess.run(command, env=env, stdout=STDERR_FD, stderr=driver_log, cwd=workdir)
    if run.returncode != 0:
        raise RuntimeError(f"the driver exited with status {run.returncode}:\n{tail(workdir / DRIVER_LOG)}")
    return json.loads(out.read_text())


def driver_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the flows' driver of hydracat bench scale (internal)")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--groups", type=int, required=True)
    parser.add_argument("--server-log", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(run_phases(args.cache, args.groups, args.server_log), indent=2) + "\n")
    return 0


# the report


def check(measured: float, limit: float) -> dict:
    return {"measured": measured, "limit": limit, "met": measured <= limit}


def targets(adapters: int, groups: int, phases: dict, prefect: dict, peak_rss: dict) -> dict:
    """The issue's targets for this run's size, if it is 10,000 / 100 or 100,000 / 1,000: {size: checks}."""
    first = phases["first_sync"]["seconds"] + phases["first_consolidate"]["seconds"]
    no_change = phases["nightly_no_change"]["seconds"]
    checks = {
        "10000/100": {
            "first_sync_and_consolidate_s": check(first, 180),
            "nightly_no_change_s": check(no_change, 10),
            "nightly_one_changed_s": check(phases["nightly_one_changed"]["seconds"], 20),
            "dropped_or_refused_events": check(prefect["dropped_events"] + prefect["refused_events"], 0),
            "peak_rss_mb": check(max(peak_rss.values()), 2048),
        },
        "100000/1000": {
            "first_nightly_s": check(first, 30 * 60),
            "nightly_no_change_s": check(no_change, 60),
        },
    }
    return {size: found for size, found in checks.items() if (adapters, groups) == TARGET_SIZES[size]}


def table(report: dict) -> str:
    header = f"{'phase':<22} {'seconds':>9} {'bundles':>8} {'moves':>7} {'registered':>10} {'dropped':>8} "
    header += f"{'refused':>8} {'warnings':>8}"
    lines = [header, "-" * len(header)]
    for name, p in report["phases"].items():
        lines.append(
            f"{name:<22} {p['seconds']:>9.2f} {p['bundles_published']:>8} {p['alias_moves']:>7} "
            f"{p['adapters_registered']:>10} {p['dropped_events']:>8} {p['refused_events']:>8} "
            f"{p['driver_warnings']:>8}"
        )
    rss, prefect = report["peak_rss_mb"], report["prefect"]
    lines.append(
        f"peak RSS: driver {rss['driver']:.0f} MiB, Prefect server {rss['prefect_server']:.0f} MiB; "
        f"Prefect events dropped {prefect['dropped_events']}, refused {prefect['refused_events']}"
    )
    for size, found in report["targets"].items():
        items = ", ".join(
            f"{name} {round(c['measured'], 1):g} <= {c['limit']:g} {'met' if c['met'] else 'MISSED'}"
            for name, c in found.items()
        )
        lines.append(f"targets for {size}: {items}")
    if not report["targets"]:
        lines.append(f"no targets at this size (they are set for {', '.join(TARGET_SIZES)})")
    return "\n".join(lines)


# the bench


def work_folder(stack: contextlib.ExitStack, workdir: str | None) -> Path:
    """--workdir (new or empty), else a temporary folder removed at the end."""
    if workdir is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hydracat-bench-scale-")))
    folder = Path(workdir).resolve()
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"--workdir {folder} is not empty: each run needs a fresh one")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_bench(args: argparse.Namespace) -> int:
    from flows.prefect_setup import template_database
    from flows.settings import FlowSettings
    from registry.store import open_store

    if args.groups < 1 or args.adapters < args.groups:
        raise SystemExit("--groups must be at least 1 and --adapters at least --groups")
    cache = Path(args.cache)
    start = time.perf_counter()
    base = build_tiny_base(base_folder(cache))
    adapters = build_catalog(cache, args.adapters, args.groups)
    changed_adapter(cache, args.groups)
    new_group_adapters(cache)
    setup = {"build_s": time.perf_counter() - start}
    with contextlib.ExitStack() as stack:
        workdir = work_folder(stack, args.workdir)
        registry = stack.enter_context(registry_database(args.database_url))
        store = stack.enter_context(object_store(args.store_url, args.s3_endpoint_url))
        for group in range(args.groups):
            install_base_model(workdir / "models", base_name(group), base)
        settings = FlowSettings.in_folder(workdir, workdir / "models", **registry, **store)
        migrate(settings.registry.database_url)
        start = time.perf_counter()
        upload(open_store(settings.registry), adapters)
        setup["upload_s"] = time.perf_counter() - start
        env = child_env(**settings.to_env(), PREFECT_HOME=str(workdir / "prefect"))
        env.pop("PREFECT_API_URL", None)  # the server is this run's own; the driver is given its URL
        template = template_database()  # migrated here when new or behind (once)
        log(f"work folder {workdir}; starting the Prefect server ...")
        start = time.perf_counter()
        with prefect_server(workdir, template, env) as (server, api_url):
            setup["prefect_start_s"] = time.perf_counter() - start
            log(f"Prefect server {api_url}; running the phases (driver log: {workdir / DRIVER_LOG})")
            driver = run_driver(workdir, env | {"PREFECT_API_URL": api_url}, cache, args.groups)
            server_rss = peak_rss_mb(server.pid)
        prefect = server_log_counts(workdir / SERVER_LOG)
    peak_rss = {"driver": driver["peak_rss_mb"], "prefect_server": server_rss}
    report = {
        "bench": "scale",
        "host": host_info(),
        "catalog": {
            "adapters": args.adapters,
            "groups": args.groups,
            "database": "postgresql" if args.database_url else "sqlite",
            "store": "s3" if args.store_url else "local",
            "rank": RANK,
            "new_group_adapters": NEW_ADAPTERS,
        },
        "setup": setup,
        "phases": driver["phases"],
        "targets": targets(args.adapters, args.groups, driver["phases"], prefect, peak_rss),
        "prefect": prefect,
        "driver_warnings": driver["driver_warnings"],
        "peak_rss_mb": peak_rss,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    log(f"wrote {out}")
    return 0


def add_scale_bench(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "scale", help="time sync-catalog, consolidate and nightly on a catalog of N adapters in G groups"
    )
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--adapters", type=int, default=10_000, help="adapters N (default 10000)")
    parser.add_argument("--groups", type=int, default=100, help="base models G, one group each (default 100)")
    parser.add_argument("--database-url", help="PostgreSQL: the registry in a new schema (default: SQLite)")
    parser.add_argument("--store-url", help="s3://bucket[/prefix]: the store in a new prefix (default local)")
    parser.add_argument("--s3-endpoint-url", help="S3 endpoint (MinIO, moto)")
    parser.add_argument("--cache", default=".cache/bench-scale", help="base model and adapters, made once")
    parser.add_argument("--workdir", help="work folder, new or empty (default: a temporary one)")
    parser.set_defaults(handler=run_bench)


if __name__ == "__main__":
    sys.exit(driver_main())
