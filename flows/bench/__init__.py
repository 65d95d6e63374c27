"""`hydracat bench ...`: reproducible benchmarks that write JSON."""

import argparse
import os
import platform
from pathlib import Path


def host_info() -> dict:
    """The machine a benchmark ran on: CPU model, cores, memory, Python."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and write JSON")
    benches = parser.add_subparsers(dest="bench", required=True)
    from flows.bench.merge import add_merge_bench
    from flows.bench.quality import add_quality_bench
    from flows.bench.registry import add_registry_bench
    from flows.bench.reliability import add_reliability_bench

    add_merge_bench(benches)
    add_registry_bench(benches)
    add_quality_bench(benches)
    add_reliability_bench(benches)
