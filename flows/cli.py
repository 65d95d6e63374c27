"""The `hydracat` command: one subcommand per job, each a thin wrapper over a library function."""

import argparse
import logging
import sys

from flows.prefect_setup import PrefectStartError
from hydraopt.cli import add_merge_command
from registry.cli import add_registry_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hydracat", description="A LoRA adapter catalog that consolidates itself."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_merge_command(subparsers)
    add_registry_commands(subparsers)
    from flows.bench import add_bench_command
    from flows.demo import add_demo_command
    from flows.serve import add_serve_command

    add_bench_command(subparsers)
    add_demo_command(subparsers)
    add_serve_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except PrefectStartError as error:  # one line saying what to set, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
