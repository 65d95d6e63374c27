"""The machine a benchmark runs on (recorded in every report) and the environment of its child processes."""

import os
import platform
from pathlib import Path

import psutil


def host_info() -> dict:
    """CPU model, cores, memory, Python."""
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


def child_env(**extra: str) -> dict[str, str]:
    """This environment, plus the repository on PYTHONPATH, plus `extra`."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    return env
