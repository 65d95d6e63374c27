"""`hydracat bench quality` at tiny scale (tiny model, 3 tasks, few steps), through the real CLI."""

import json

import pytest

from bench.quality import RIVALS
from flows.cli import main
from hydraopt.evaluation import read_suite

TASKS = ["sentiment", "capitalise_names", "arithmetic"]
RANKS = [2, 4]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("bench-quality")
    out, png = folder / "quality.json", folder / "quality.png"
    argv = [
        "bench", "quality", "--base", "tiny", "--json", str(out), "--plot", str(png), "--tasks", *TASKS,
        "--rank", "4", "--ranks", "2,4", "--heads", "1,2,0", "--steps", "4", "--batch-size", "4",
        "--train-size", "16", "--eval-size", "6", "--distill-steps", "2", "--distill-learning-rate", "1e-3",
        "--cache", str(folder / "cache"),
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text()), {"folder": folder, "png": png}


def test_every_setting_is_reported_with_storage_and_retention(run):
    report, _ = run
    names = [row["name"] for row in report["results"]]
    hydra = [
        f"hydraopt{kind} K={k} r'={r}"
        for k in (1, 2, 3)
        for r in RANKS
        for kind in ("", "+refine", "+distill")
    ]
    rivals = [name for name in names if name.split(" ")[0] in RIVALS]
    assert names == ["individual", "task_arithmetic", "ties", "dare_linear", "dare_ties", *rivals, *hydra]
    assert {name.split(" ")[0] for name in rivals} == set(RIVALS)
    n = len(TASKS)
    for row in report["results"]:
        assert set(row["tasks"]) == set(TASKS)
        if row["method"] == "hydraopt":
            # (r'·Σd_in + K·r'·Σd_out) / (N·r·(Σd_in + Σd_out)) with the tiny Llama's q, k, v, o
            sum_in, sum_out = 4 * 64, 2 * 64 + 2 * 32
            expected = (row["rank"] * sum_in + row["heads"] * row["rank"] * sum_out) / (
                n * 4 * (sum_in + sum_out)
            )
            assert row["storage_ratio"] == pytest.approx(expected)
        elif row["method"] in RIVALS:  # matched to about 1/N, 0.25 or 0.5 of the sources
            assert row["storage_ratio"] <= 0.5 + 1e-9 or row["rank"] == 1
        elif row["method"] != "individual":
            assert row["storage_ratio"] == pytest.approx(1 / n)
    assert report["config"]["notice"] and "tiny" in report["config"]["notice"]
    assert set(report["targets"]) == {
        "hydraopt_at_most_55pct_storage",
        "hydraopt_k1_vs_best_baseline",
        "auto_no_larger_than_smallest_passing",
    }


def test_refined_and_distilled_rows_record_how_they_were_made(run):
    report, _ = run
    assert report["config"]["refine"] == {"examples": 64, "iterations": 8}
    assert report["config"]["distill"] == {"steps": 2, "examples": 64, "learning_rate": 1e-3}
    hydra = [row for row in report["results"] if row["method"] == "hydraopt"]
    by_stage = {
        stage: [r for r in hydra if r["stage"] == stage] for stage in ("closed", "refined", "distilled")
    }
    assert [len(rows) for rows in by_stage.values()] == [6, 6, 6]
    assert all(
        row["params"]["refine"]["iterations"] == 8 for row in by_stage["refined"] + by_stage["distilled"]
    )
    for row in by_stage["distilled"]:  # distilled from the refined merge, kept only where the KL fell
        record = row["params"]["distill"]
        assert record["steps"] == 2 and record["kept"] == (record["kl_after"] < record["kl_before"])
    closed = {(r["heads"], r["rank"]): r for r in by_stage["closed"]}
    for row in by_stage["refined"]:  # same storage, a different merge
        twin = closed[(row["heads"], row["rank"])]
        assert row["storage_ratio"] == twin["storage_ratio"]
        assert row["mean_relative_error"] != twin["mean_relative_error"]


def test_suite_and_adapters_are_cached_and_the_plot_is_written(run):
    _, files = run
    assert [task.name for task in read_suite(files["folder"] / "cache" / "suite")] == sorted(TASKS)
    adapters = list((files["folder"] / "cache" / "adapters").glob("*/*/adapter_model.safetensors"))
    assert len(adapters) == len(TASKS)
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_auto_uses_the_sweep_grid(run):
    report, _ = run
    tried = {(t["heads"], t["rank"]) for t in report["auto"]["tried"]}
    assert tried <= {(k, r) for k in (1, 2, 3) for r in RANKS}


def test_a_target_whose_settings_were_not_swept_is_not_applicable():
    from bench.quality import targets

    def row(name, method, heads, rank, storage, mean, low, publish):
        return {"name": name, "method": method, "heads": heads, "rank": rank, "storage_ratio": storage,
                "mean_retention": mean, "min_retention": low, "publish": publish}  # fmt: skip

    rows = [
        row("ties", "ties", 1, 8, 0.111, 0.34, 0.0, False),
        row("h", "hydraopt", 9, 8, 0.467, 0.997, 0.973, True),
    ]
    auto = {"setting": {"storage_ratio": 0.467}, "excluded": {}}
    judged = targets(rows, auto, source_rank=8)
    assert judged["hydraopt_k1_vs_best_baseline"]["met"] is None  # no K = 1 at rank 8 in the sweep
    assert judged["hydraopt_at_most_55pct_storage"]["met"] is True
    assert judged["auto_no_larger_than_smallest_passing"]["met"] is True
    rows.append(row("k1", "hydraopt", 1, 8, 0.111, 0.30, 0.0, False))
    assert targets(rows, auto, source_rank=8)["hydraopt_k1_vs_best_baseline"]["met"] is False
