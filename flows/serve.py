"""`hydracat serve`: a local Prefect server with its UI, serving the five deployments.

Embedded mode: the registry is the settings' database (a SQLite file by default, migrated on
start) and the object store the settings' store (a local folder by default). The Prefect server
runs as a child process on 127.0.0.1 (its own database under PREFECT_HOME, migrated here before it
starts; see `flows.prefect_setup`) unless ``--api-url`` (or PREFECT_API_URL) names a server to use
instead. Deployments:

- ``nightly`` on a cron schedule (default ``0 2 * * *``, UTC): sync-catalog then consolidate;
- ``watch`` (of sync-catalog) every ``--watch-interval`` seconds (default 300), one run at a time,
  and at once when a base model or alias is registered;
- ``consolidate`` on demand, and for a base model once its adapter events have been quiet for
  ``--quiet-window`` seconds (default 600; `flows.triggers`);
- ``sync-catalog`` on demand (Prefect UI: Deployments -> Run; the bucket-notification endpoint of
  `hydracat api` starts it for the adapters an upload touched);
- ``consolidate-group`` on demand, for one group. Served here it has no work pool, so consolidate
  merges its groups in its own process (the deployments of `infra/prefect.yaml` fan them out to the
  ``gpu`` pool's workers instead).
"""

import argparse
import os
import signal
import subprocess
import sys

from flows.prefect_setup import PrefectStartError, migrate_database, startup_timeout_s
from flows.processes import stop_process, wait_until_answering
from flows.triggers import QUIET_WINDOW_S, WATCH_INTERVAL_S

NIGHTLY_CRON = "0 2 * * *"


def start_prefect_server(host: str, port: int) -> subprocess.Popen:
    """`prefect server start` as a child process, its database migrated first; returns once /api/health
    answers, PrefectStartError if that takes longer than the start-up timeout."""
    migrate_database()
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    ui_env = {"PREFECT_UI_API_URL": f"http://{host}:{port}/api"}  # the UI must call this server, not :4200
    process = subprocess.Popen(command, env=os.environ | ui_env)
    url, timeout_s = f"http://{host}:{port}/api/health", startup_timeout_s()
    try:
        return wait_until_answering(process, url, "the Prefect server", timeout_s)
    except TimeoutError as error:
        raise PrefectStartError(timeout_s) from error


def deployments(cron: str, watch_interval_s: int = WATCH_INTERVAL_S, quiet_window_s: int = QUIET_WINDOW_S):
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron, Interval

    from flows.catalog import sync_catalog
    from flows.consolidate import consolidate, consolidate_group
    from flows.nightly import nightly
    from flows.triggers import consolidate_trigger, deployment_trigger, sync_trigger

    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy="CANCEL_NEW")
    on_adapter_changes = deployment_trigger(consolidate_trigger(quiet_window_s))
    on_base_model_changes = deployment_trigger(sync_trigger())
    return [
        nightly.to_deployment(name="nightly", schedules=[Cron(cron, timezone="UTC")],
                              description="sync-catalog then consolidate, every night"),
        sync_catalog.to_deployment(name="sync-catalog", description="register new adapters from the bucket"),
        sync_catalog.to_deployment(name="watch", schedules=[Interval(watch_interval_s)],
                                   concurrency_limit=one_at_a_time, triggers=[on_base_model_changes],
                                   description=f"sync-catalog every {watch_interval_s} s"),
        consolidate.to_deployment(name="consolidate", triggers=[on_adapter_changes],
                                  description="merge, evaluate and publish every group; a base model's "
                                              f"{quiet_window_s} s after its adapters changed"),
        consolidate_group.to_deployment(name="consolidate-group",
                                        description="merge, evaluate and publish one group"),
    ]  # fmt: skip


def prepare_registry() -> None:
    """Migrate the registry database and create the local store folder (embedded defaults)."""
    from registry.db import make_engine, upgrade
    from registry.settings import Settings
    from registry.store import open_store

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    open_store(settings)
    store = settings.store_url or settings.store_path
    print(f"registry {settings.database_url}, object store {store}", flush=True)


def interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def run_serve(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, interrupt)  # stop like Ctrl-C: the Prefect server child goes too
    prepare_registry()
    api_url = args.api_url or os.environ.get("PREFECT_API_URL")
    server = None
    if not api_url:
        print(f"starting the Prefect server on http://{args.host}:{args.port} ...", flush=True)
        server = start_prefect_server(args.host, args.port)
        api_url = f"http://{args.host}:{args.port}/api"
        print(f"Prefect UI: http://{args.host}:{args.port}", flush=True)
    os.environ["PREFECT_API_URL"] = api_url
    try:
        from prefect import serve
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            serve(*deployments(args.cron, args.watch_interval, args.quiet_window), limit=args.limit)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            stop_process(server)
    return 0


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start a local Prefect server + UI and serve the nightly, watch and on-demand flows",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Prefect server host (127.0.0.1)")
    parser.add_argument("--port", type=int, default=4200, help="Prefect server port (4200)")
    parser.add_argument("--api-url", help="use this Prefect API instead of starting a server")
    parser.add_argument("--cron", default=NIGHTLY_CRON, help=f"nightly schedule, UTC ({NIGHTLY_CRON!r})")
    parser.add_argument("--limit", type=int, default=2, help="flow runs at once (2)")
    parser.add_argument(
        "--watch-interval", type=int, default=WATCH_INTERVAL_S, metavar="S",
        help=f"seconds between the watch runs of sync-catalog ({WATCH_INTERVAL_S})",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-window", type=int, default=QUIET_WINDOW_S, metavar="S",
        help=f"seconds a base model's adapters stay unchanged before it is consolidated ({QUIET_WINDOW_S})",
    )  # fmt: skip
    parser.set_defaults(handler=run_serve)
