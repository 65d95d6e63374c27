"""`hydracat bench reliability` end to end (its own moto server, registry and Prefect server): every
bad input refused, every injected fault survived, a short load, and the figures in the JSON."""

import json
import subprocess
import sys

from bench.bad_inputs import BAD_KEYS, corrupt_cases
from bench.reliability import SCENARIOS, TASKS

LOAD_SECONDS, RATE = 4, 50


def test_bench_reliability_reports_what_it_checked(tmp_path):
    out = tmp_path / "reliability.json"
    command = [sys.executable, "-m", "flows.cli", "bench", "reliability", "--json", str(out),
               "--load-seconds", str(LOAD_SECONDS), "--rate", str(RATE), "--retry-delay", "0.2"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "lost or inconsistent records: 0" in run.stdout

    inputs = report["inputs"]
    assert set(inputs["cases"]) == set(corrupt_cases(tmp_path / "unused"))
    for case, result in inputs["cases"].items():
        merge, sync = result["merge"], result["sync"]
        assert merge["exit"] == 2 and merge["error_lines"] == 1 and merge["refused"], (case, merge)
        assert sync["quarantined"] and sync["matches"], (case, sync)
    assert inputs["valid_all_registered"] and inputs["valid_registered"] == sorted(f"{t}/1" for t in TASKS)
    keys = inputs["unsafe_keys"]["refused"]
    assert len(keys) == len(BAD_KEYS) and all(keys.values())
    assert not inputs["pickle_executed"]
    assert inputs["tried"] == inputs["refused"] == len(inputs["cases"]) + len(BAD_KEYS)

    faults = report["faults"]
    assert [f["fault"] for f in faults] == [s.name for s in SCENARIOS]
    for fault in faults:
        assert fault["injected"] > 0 and fault["error"] is None, fault
        assert fault["checks"] and all(fault["checks"].values()) and fault["survived"], fault

    audit = report["audit"]  # one bundle for the valid adapters, then one per fault, each moving every task
    assert audit["problems"] == [] and audit["aliases"] == len(TASKS)
    assert audit["bundles"] == 1 + len(faults) and audit["alias_events"] == len(TASKS) * (1 + len(faults))

    load = report["load"]
    assert load["served"] == LOAD_SECONDS * RATE and load["consistency"]["inconsistent"] == 0
    totals = report["totals"]
    assert totals == {
        "inputs_tried": inputs["tried"],
        "inputs_refused": inputs["refused"],
        "faults_injected": len(faults),
        "faults_survived": len(faults),
        "lost_or_inconsistent": 0,
        "requests_served": load["served"],
        "request_errors": 0,
        "p99_ms": load["latency"]["p99_ms"],
    }
    assert totals["p99_ms"] > 0 and report["machine"]["cpu_count"] >= 1
