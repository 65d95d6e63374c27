"""`hydracat bench merge` at tiny scale, through the real CLI entry point."""

import json

import pytest

from flows.cli import main

N, RANK, LAYERS, HIDDEN, KV_OUT = 5, 2, 1, 32, 16
TIMED = ("jd_full",)  # of the rivals (each is a child process; the methods have their own tests)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bench-merge")
    out = folder / "bench.json"
    argv = [
        "bench", "merge", "--json", str(out), "--adapters", str(N), "--rank", str(RANK),
        "--layers", str(LAYERS), "--hidden", str(HIDDEN), "--kv-out", str(KV_OUT),
        "--heads", "N,4,2", "--cache", str(folder / "cache"), "--methods", ",".join(TIMED),
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())


def analytic_ratio(heads: int, rank: int) -> float:
    sum_in = LAYERS * 4 * HIDDEN
    sum_out = LAYERS * (2 * HIDDEN + 2 * KV_OUT)
    return (rank * sum_in + heads * rank * sum_out) / (N * RANK * (sum_in + sum_out))


def test_every_method_ran_with_positive_times(report):
    methods = [r["method"] for r in report["results"]]
    assert methods == [
        f"hydraopt K={N}", "hydraopt K=4", "hydraopt K=2", *TIMED, "peft ties", "peft dare_ties", "peft svd",
    ]  # fmt: skip
    for record in report["results"]:
        assert record["wall_s"] > 0
        assert record["peak_rss_mb"] > 0
        assert record["impl"] == ("peft" if record["method"].startswith("peft") else "hydracat")
        assert 0 <= record["recon_error_mean"] <= record["recon_error_max"]
    assert set(report["machine"]) >= {"cpu_model", "cpu_count", "torch_threads", "memory_gb", "device"}
    assert set(report["targets"]) == {
        "hydraopt_KN_under_60s", "at_least_10x_faster_than_peft_svd", "peak_rss_under_4GB",
    }  # fmt: skip
    assert report["ratios"]["peft_svd_over_hydraopt_KN"] > 0


def test_storage_ratios_are_analytic(report):
    results = {r["method"]: r for r in report["results"]}
    for heads in (N, 4, 2):
        assert results[f"hydraopt K={heads}"]["storage_ratio"] == pytest.approx(
            analytic_ratio(heads, RANK), abs=1e-6
        )
    for method in ("ties", "dare_ties", "svd"):
        record = results[f"peft {method}"]
        assert record["params"]["merged_rank"] == [RANK]
        assert record["storage_ratio"] == pytest.approx(analytic_ratio(1, RANK), abs=1e-6)


def test_more_heads_reconstruct_better(report):
    results = {r["method"]: r for r in report["results"]}
    full = results[f"hydraopt K={N}"]["recon_error_mean"]
    assert full <= results["hydraopt K=4"]["recon_error_mean"] + 1e-9
    assert full <= results["hydraopt K=2"]["recon_error_mean"] + 1e-9
    # the same mean ΔW, truncated to rank r: PEFT's svd is the one-head task-arithmetic optimum
    assert results["hydraopt K=2"]["recon_error_mean"] <= results["peft svd"]["recon_error_mean"] + 1e-9


def test_a_rival_is_timed_and_scored_alike(report):
    (jd,) = [r for r in report["results"] if r["method"] == "jd_full"]
    sum_in, sum_out = LAYERS * 4 * HIDDEN, LAYERS * (2 * HIDDEN + 2 * KV_OUT)
    assert jd["storage"]["bundle_params"] == RANK * (sum_in + sum_out) + N * LAYERS * 4 * RANK * RANK
    assert jd["wall_s"] > 0 and 0 <= jd["recon_error_mean"] <= jd["recon_error_max"] < 1
