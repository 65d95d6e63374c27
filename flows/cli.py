"""The `hydracat` command: one subcommand per job, each a thin wrapper over a library function.

The product's commands are listed here; other packages add theirs through the entry-point group
`hydracat.commands` (name = command, value = "module:function" that adds its parser): the
benchmarks and the demo (`bench/`) come in that way, so nothing here imports them. Each command's
module is imported only when that command runs (or for the full `--help`), so `hydracat registry
current` or `hydracat merge` do not pay for Prefect, the benchmarks or torch when they do not use them.
"""

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from flows.prefect_setup import PrefectStartError

# command -> "module:function" that adds its parser (one function may add several commands)
COMMANDS = {
    "merge": "hydraopt.cli:add_merge_command",
    "registry": "flows.registry_commands:add_registry_commands",
    "api": "flows.registry_commands:add_registry_commands",
    "serve": "flows.serve:add_serve_command",
}
PLUGIN_GROUP = "hydracat.commands"


def commands() -> dict[str, str]:
    """The product's commands, then those installed packages add (a product command is never replaced)."""
    plugins = {point.name: point.value for point in entry_points(group=PLUGIN_GROUP)}
    return COMMANDS | {name: spec for name, spec in plugins.items() if name not in COMMANDS}


class CommandUnavailable(Exception):
    """An installed command whose code or dependencies cannot be imported here."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the command `argv` names (every command's when it names none it knows).

    Raises CommandUnavailable for a named command that cannot be imported; the full help leaves
    such commands out (a product image without `bench/` still answers `hydracat --help`)."""
    parser = argparse.ArgumentParser(
        prog="hydracat", description="A LoRA adapter catalog that consolidates itself."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    known = commands()
    named = next((arg for arg in argv or () if not arg.startswith("-")), None)
    specs = [known[named]] if named in known else list(dict.fromkeys(known.values()))
    for spec in specs:
        module, function = spec.split(":")
        try:
            add_command = getattr(importlib.import_module(module), function)
        except ImportError as error:
            if spec in COMMANDS.values():
                raise  # a product command that cannot be imported is a broken install
            if named not in known:
                continue  # the full help lists the added commands that can be loaded here
            raise CommandUnavailable(
                f"hydracat {named} cannot be loaded here ({error}): it comes with the repository's "
                "bench/ folder and needs pip install 'hydracat[bench]'"
            ) from error
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
    except CommandUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except PrefectStartError as error:  # one line saying what to set, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
