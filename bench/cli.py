"""`hydracat bench ...`: reproducible benchmarks that write JSON."""

import argparse

from bench.merge import add_merge_bench
from bench.quality import add_quality_bench
from bench.registry import add_registry_bench
from bench.reliability import add_reliability_bench
from bench.scale import add_scale_bench
from bench.watch import add_watch_bench


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and write JSON")
    benches = parser.add_subparsers(dest="bench", required=True)
    add_merge_bench(benches)
    add_registry_bench(benches)
    add_quality_bench(benches)
    add_reliability_bench(benches)
    add_scale_bench(benches)
    add_watch_bench(benches)
