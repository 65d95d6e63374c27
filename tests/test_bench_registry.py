"""`hydracat bench registry` at tiny scale, through the real CLI entry point (no MLflow needed)."""

import json

import pytest

from flows.cli import main

TASKS, ADAPTERS, QUERIES, RATE = 50, 200, 50, 50


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench-registry") / "bench.json"
    argv = [
        "bench", "registry", "--json", str(out), "--tasks", str(TASKS), "--adapters", str(ADAPTERS),
        "--queries", str(QUERIES), "--rate", str(RATE), "--skip-mlflow",
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_report_structure(report):
    assert {"machine", "config", "populate", "results", "ratios", "targets"} <= set(report)
    assert report["config"]["tasks"] == TASKS and report["config"]["adapters"] == ADAPTERS
    assert report["machine"]["cpu_count"] >= 1
    populate = report["populate"]["hydracat"]
    assert "insert()" in populate["method"]
    assert populate["rows"]["adapters"] == ADAPTERS and populate["rows"]["task_aliases"] == TASKS
    assert "mlflow" not in report["populate"]
    assert report["check"]["tasks_with_current_alias"] == TASKS
    assert report["ratios"] == {}
    assert report["targets"]["p99_at_most_one_third_of_mlflow"] is None


def test_current_bundle_has_full_shape(report):
    sample = report["check"]["sample"]
    assert sample["alias"] == "current" and sample["adapter"]["version"] == str(ADAPTERS // TASKS)
    assert sample["task_adapter_uri"] == f"{sample['bundle_uri']}/tasks/{sample['task']}"
    assert any(member["task"] == sample["task"] for member in sample["manifest"]["members"])


def test_latencies_positive_and_ordered(report):
    surfaces = [record["surface"] for record in report["results"]]
    assert surfaces == ["python", "http"]
    for record in report["results"]:
        assert record["n"] == QUERIES
        assert 0 < record["p50_ms"] <= record["p99_ms"] <= record["max_ms"]
        assert record["mean_ms"] > 0


def test_http_paced_without_errors(report):
    http = report["results"][1]
    assert http["errors"] == 0 and http["completed"] == QUERIES == http["requests"]
    assert http["target_rate"] == RATE
    assert 0 < http["achieved_rate"] <= RATE * 1.2
    assert report["targets"]["http_zero_errors"] is True
