"""`hydracat bench scale` end to end at a small size: the real flows against a real Prefect server, on
a SQLite registry and a local store in the test's folder; the counts come from the registry."""

import json
import subprocess
import sys
from pathlib import Path

from bench.scale import NEW_ADAPTERS

ADAPTERS, GROUPS = 24, 3
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-models" / "bench-scale"
PHASES = [
    "first_sync", "first_consolidate", "nightly_no_change", "watch_no_change", "nightly_one_changed",
    "nightly_new_group",
]  # fmt: skip


def test_bench_scale_times_each_phase_and_counts_what_it_published(tmp_path, prefect_template):
    out = tmp_path / "scale.json"
    command = [sys.executable, "-m", "flows.cli", "bench", "scale", "--adapters", str(ADAPTERS),
               "--groups", str(GROUPS), "--cache", str(CACHE), "--workdir", str(tmp_path / "work"),
               "--json", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["bench"] == "scale" and report["host"]["cpu_count"] >= 1
    assert report["catalog"] | {"adapters": ADAPTERS, "groups": GROUPS} == report["catalog"]
    assert (report["catalog"]["database"], report["catalog"]["store"]) == ("sqlite", "local")
    phases = report["phases"]
    assert list(phases) == PHASES
    assert all(phase["seconds"] > 0 for phase in phases.values())
    keys = ("bundles_published", "alias_moves", "adapters_registered")
    counted = {name: tuple(phase[key] for key in keys) for name, phase in phases.items()}
    assert counted == {  # (bundles published, alias moves, adapter versions registered)
        "first_sync": (0, 0, ADAPTERS),
        "first_consolidate": (GROUPS, ADAPTERS, 0),  # every group passes the gate: one alias move per task
        "nightly_no_change": (0, 0, 0),
        "watch_no_change": (0, 0, 0),
        "nightly_one_changed": (1, ADAPTERS // GROUPS, 1),  # its group's tasks move to the new bundle
        "nightly_new_group": (1, NEW_ADAPTERS, NEW_ADAPTERS),
    }
    for counts in [report["prefect"], *phases.values()]:
        assert isinstance(counts["dropped_events"], int) and isinstance(counts["refused_events"], int)
    assert report["peak_rss_mb"]["driver"] > 0 and report["peak_rss_mb"]["prefect_server"] > 0

    assert report["targets"] == {}  # set for 10,000 / 100 and 100,000 / 1,000 only
    assert "nightly_one_changed" in run.stdout and "no targets at this size" in run.stdout
