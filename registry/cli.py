"""Registry commands for the `hydracat` CLI: `registry init|current|history|rollback|retire|list`,
`registry base-model add|alias|list` and `api`.

`add_registry_commands(subparsers, notify, routes)` adds them to an argparse subparsers object;
each command sets `args.handler` to one `run_*(args) -> int` function (0 = success, 1 = registry
error). Their registries hand every committed change to `notify`; `api` adds `routes` to the app.
`--json` prints the same shapes as `Registry` and the HTTP API.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.exc import DBAPIError

from registry.api import Registry
from registry.db import make_engine, upgrade
from registry.errors import RegistryError
from registry.events import Notify
from registry.models import ADAPTER_STATUSES
from registry.settings import Settings

# Longer than the idle timeouts of the clients and proxies in front (httpx 5 s, AWS ALB 60 s), so they
# close idle connections first: with uvicorn's 5 s a client could send a request on a connection the
# server was closing, and get a ReadError (one in a thousand under the HTTP load test).
KEEP_ALIVE_S = 75


def add_registry_commands(
    subparsers: argparse._SubParsersAction, notify: Notify | None = None, routes: Sequence = ()
) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url", help="registry database URL (default: $HYDRACAT_DATABASE_URL or SQLite)"
    )
    common.set_defaults(notify=notify, routes=routes)
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

    retire = commands.add_parser("retire", parents=[common], help="retire an adapter version: merged no more")
    retire.add_argument("name")
    retire.add_argument("version")
    retire.add_argument("--json", action="store_true", help="print JSON")
    retire.set_defaults(handler=run_retire)

    listing = commands.add_parser(
        "list", parents=[common], help="adapter versions, with why a pending or quarantined one waits"
    )
    listing.add_argument("--status", choices=ADAPTER_STATUSES)
    listing.add_argument("--name", help="only this adapter")
    listing.add_argument("--base-model", help="only adapters of this base model")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)

    add_base_model_commands(commands, common)

    api = subparsers.add_parser("api", parents=[common], help="serve the registry HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument(
        "--keep-alive-s", type=int, default=KEEP_ALIVE_S,
        help=f"seconds an idle connection stays open (default {KEEP_ALIVE_S})",
    )  # fmt: skip
    api.set_defaults(handler=run_api)


def add_base_model_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    base = commands.add_parser("base-model", help="register base models and their aliases")
    actions = base.add_subparsers(dest="base_model_command", required=True)

    add = actions.add_parser("add", parents=[common], help="register a base model by name")
    add.add_argument("name", help="its name, e.g. the hub id: HuggingFaceTB/SmolLM2-135M-Instruct")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--hub", metavar="REPO[@REV]", help="a hub repo, pinned to REV if given")
    source.add_argument("--path", metavar="DIR", help="a model folder on the machines that run the flows")
    source.add_argument(
        "--uri", metavar="URI", help="a model folder in the object store (s3://... or file://...)"
    )
    add.add_argument("--revision", help="the revision it is pinned to (same as --hub REPO@REV)")
    add.add_argument(
        "--alias", action="append", default=[], help="another name adapters use for it (repeatable)"
    )
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(handler=run_base_model_add)

    alias = actions.add_parser("alias", parents=[common], help="add another name for a base model")
    alias.add_argument("alias", help="the name as adapter configs give it, e.g. /home/alice/ckpt/base")
    alias.add_argument("name", help="the registered base model it stands for")
    alias.add_argument("--json", action="store_true", help="print JSON")
    alias.set_defaults(handler=run_base_model_alias)

    listing = actions.add_parser("list", parents=[common], help="registered base models")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_base_model_list)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "database_url", None):
        settings = replace(settings, database_url=args.database_url)
    return settings


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.from_settings(_settings(args), notify=args.notify)


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


def run_retire(args: argparse.Namespace) -> int:
    try:
        row = _registry(args).retire_adapter(args.name, args.version)
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    print(json.dumps(row, indent=2) if args.json else f"{row['name']} {row['version']}: {row['status']}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        rows = _registry(args).list_adapters(base_model=args.base_model, status=args.status, name=args.name)
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        base = row["base_model"]
        reason = row["pending_reason"] or row["quarantine_reason"]
        print(
            f"{row['name']}  {row['version']}  {row['status']}  {base['name']}"
            f"{'@' + base['revision'] if base['revision'] else ''}{'  ' + reason if reason else ''}"
        )
    return 0


def run_base_model_add(args: argparse.Namespace) -> int:
    kind, location = next((k, v) for k in ("hub", "path", "uri") if (v := getattr(args, k)) is not None)
    revision = args.revision
    if kind == "hub":
        location, at, pinned = location.partition("@")
        revision = pinned if at else revision
    try:
        source = _registry(args).add_base_model(
            args.name, kind=kind, location=location, revision=revision, aliases=args.alias
        )
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    _print_base_models(source, args.json)
    return 0


def run_base_model_alias(args: argparse.Namespace) -> int:
    try:
        source = _registry(args).add_base_model_alias(args.alias, args.name)
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    _print_base_models(source, args.json)
    return 0


def run_base_model_list(args: argparse.Namespace) -> int:
    try:
        sources = _registry(args).list_base_models()
    except (RegistryError, DBAPIError) as error:
        return _fail(error)
    _print_base_models(sources, args.json)
    return 0


def _print_base_models(shown: dict | list[dict], as_json: bool) -> None:
    """One base model (add, alias) or the list, as JSON or one line each."""
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    for source in [shown] if isinstance(shown, dict) else shown:
        pinned = f"@{source['revision']}" if source["revision"] else ""
        aliases = f"  aliases: {', '.join(source['aliases'])}" if source["aliases"] else ""
        print(f"{source['name']}  {source['kind']} {source['location']}{pinned}{aliases}")


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from registry.http import create_app

    settings = _settings(args)
    app = create_app(_registry(args), settings.api_token, args.routes)
    uvicorn.run(app, host=args.host, port=args.port, timeout_keep_alive=args.keep_alive_s)
    return 0
