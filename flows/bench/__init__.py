"""`hydracat bench ...`: reproducible benchmarks that write JSON."""

import argparse


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and write JSON")
    benches = parser.add_subparsers(dest="bench", required=True)
    from flows.bench.merge import add_merge_bench
    from flows.bench.registry import add_registry_bench

    add_merge_bench(benches)
    add_registry_bench(benches)
