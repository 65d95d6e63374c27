"""`hydracat registry ...` and `hydracat api` as the product installs them: the registry writes they
make are sent as Prefect events (`flows.events`), and the API also takes bucket notifications
(`flows.notifications`)."""

import argparse

from flows.events import emit_changes
from flows.notifications import add_object_created_route
from registry.cli import add_registry_commands as add_plain_registry_commands


def add_registry_commands(subparsers: argparse._SubParsersAction) -> None:
    add_plain_registry_commands(subparsers, notify=emit_changes, routes=[add_object_created_route])
