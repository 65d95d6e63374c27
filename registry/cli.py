"""Registry commands for the `hydracat` CLI: `registry init|current|history|rollback` and `api`.

`add_registry_commands(subparsers)` adds them to an argparse subparsers object; each command
sets `args.handler` to one `run_*(args) -> int` function (0 = success, 1 = registry error).
`--json` prints the same shapes as `Registry` and the HTTP API.
"""

import argparse
import json
import sys
from dataclasses import replace

from sqlalchemy.exc import DBAPIError

from registry.api import Registry
from registry.db import make_engine, upgrade
from registry.errors import RegistryError
from registry.settings import Settings


def add_registry_commands(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url", help="registry database URL (default: $HYDRACAT_DATABASE_URL or SQLite)"
    )
    registry = subparsers.add_parser("registry", help="query and manage the adapter registry")
    commands = registry.add_subparsers(dest="registry_command", required=True)

    init = commands.add_parser("init", parents=[common], help="create or migrate the database")
    init.set_defaults(handler=run_init)

    current = commands.add_parser("current", parents=[common], help="the current bundle of a task")
    current.add_argument("--task", required=True)
    current.add_argument("--json", action="store_true", help="print JSON")
    current.set_defaults(handler=run_current)

    history = commands.add_parser("history", parents=[common], help="alias moves of a task")
    history.add_argument("--task", required=True)
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(handler=run_history)

    rollback = commands.add_parser(
        "rollback", parents=[common], help="move a task back to its previous bundle"
    )
    rollback.add_argument("--task", required=True)
    rollback.add_argument("--actor", default="cli", help="who rolls back (logged)")
    rollback.add_argument("--reason", default="rollback")
    rollback.set_defaults(handler=run_rollback)

    api = subparsers.add_parser("api", parents=[common], help="serve the registry HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.set_defaults(handler=run_api)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "database_url", None):
        settings = replace(settings, database_url=args.database_url)
    return settings


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.from_settings(_settings(args))


def _fail(error: RegistryError | DBAPIError) -> int:
    if isinstance(error, DBAPIError):
        message = f"database error: {error.orig} (run `hydracat registry init` to create it)"
    else:
        message = str(error)
    print(f"error: {message}", file=sys.stderr)
    return 1


def run_init(args: argparse.Namespace) -> int:
    engine = make_engine(_settings(args).database_url)
    upgrade(engine)
    print(f"registry database ready: {engine.url.render_as_string(hide_password=True)}")
    return 0


def run_current(args: argparse.Namespace) -> int:
    try:
        current = _registry(args).current_bundle(args.task)
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    if args.json:
        print(json.dumps(current, indent=2))
    else:
        print(f"task:       {current['task']}")
        print(f"bundle:     {current['bundle_id']} (head {current['head']})")
        print(f"base model: {current['base_model']['name']}")
        print(f"adapter:    {current['task_adapter_uri']}")
        print(f"since:      {current['updated_at']}")
    return 0


def run_history(args: argparse.Namespace) -> int:
    try:
        events = _registry(args).history(args.task)
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for event in events:
        print(
            f"{event['created_at']}  {event['action']:<8}  {event['from_bundle_id'] or '-'}"
            f" -> {event['to_bundle_id']}  by {event['actor']}: {event['reason']}"
        )
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    try:
        event = _registry(args).rollback(args.task, actor=args.actor, reason=args.reason)
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    print(f"{args.task}: {event['from_bundle_id']} -> {event['to_bundle_id']}")
    return 0


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from registry.http import create_app

    settings = _settings(args)
    app = create_app(Registry.from_settings(settings), settings.api_token)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
