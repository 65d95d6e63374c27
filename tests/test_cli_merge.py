"""`hydracat merge` as a user runs it: a subprocess printing one JSON object."""

import json
import subprocess
import sys

from hydraopt.formats.bundle import read_bundle


def hydracat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_merge_writes_bundle_and_prints_summary(peft_adapters, tmp_path):
    assign = tmp_path / "assign.json"
    assign.write_text(json.dumps({p.name: i % 2 for i, p in enumerate(peft_adapters)}))
    run = hydracat(
        "merge",
        "--method",
        "hydraopt",
        "--assign",
        str(assign),
        "--rank",
        "4",
        "--out",
        str(tmp_path / "b"),
        *map(str, peft_adapters),
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    bundle = read_bundle(tmp_path / "b")
    assert summary["bundle_id"] == bundle.manifest["bundle_id"]
    assert summary["storage"]["bundle_params"] == sum(
        m.A.numel() + m.B.numel() for m in bundle.modules.values()
    )
    assert summary["storage"]["ratio"] == round(
        summary["storage"]["bundle_params"] / summary["storage"]["source_params"], 6
    )
    assert {v["task"]: v["head"] for v in summary["tasks"]} == {
        p.name: i % 2 for i, p in enumerate(peft_adapters)
    }
    assert all(0 < v["relative_error"] < 1 for v in summary["tasks"])
    assert "merging modules 8/8" in run.stderr


def test_full_heads_and_rank_reproduce_every_task(peft_adapters, tmp_path):
    run = hydracat(
        "merge", "--heads", "4", "--rank", "18", "--out", str(tmp_path / "b"), *map(str, peft_adapters)
    )
    assert run.returncode == 0, run.stderr
    assert all(v["relative_error"] < 1e-10 for v in json.loads(run.stdout)["tasks"])


def test_bad_input_exits_2_with_a_message_and_no_traceback(peft_adapters, tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "pickled" / "adapter_config.json").write_text(
        (peft_adapters[0] / "adapter_config.json").read_text()
    )
    run = hydracat("merge", "--out", str(tmp_path / "b"), str(peft_adapters[0]), str(tmp_path / "pickled"))
    assert run.returncode == 2
    assert "adapter_model.bin" in run.stderr and "Traceback" not in run.stderr
    run = hydracat(
        "merge", "--method", "ties", "--heads", "2", "--out", str(tmp_path / "c"), *map(str, peft_adapters)
    )
    assert run.returncode == 2 and "no parameter(s) ['heads']" in run.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_every_knob_of_every_method_is_a_flag_that_reaches_the_merge(peft_adapters, tmp_path):
    from dataclasses import fields

    from hydraopt.cli import method_knobs
    from hydraopt.methods import METHODS

    knobs = {knob.name for knob in method_knobs()}
    assert knobs == {f.name for method in METHODS.values() for f in fields(method.params_type)}
    weights = ",".join(str(0.1 * (i + 1)) for i in range(len(peft_adapters)))
    run = hydracat(
        "merge", "--method", "dare_ties", "--weights", weights, "--density", "0.3",
        "--majority-sign-method", "frequency", "--seed", "7", "--out", str(tmp_path / "b"),
        *map(str, peft_adapters),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    params = json.loads(run.stdout)["params"]
    assert params["weights"] == [0.1 * (i + 1) for i in range(len(peft_adapters))]
    assert (params["density"], params["majority_sign_method"], params["seed"]) == (0.3, "frequency", 7)
    bad = hydracat("merge", "--weighting", "squared", "--out", str(tmp_path / "c"), *map(str, peft_adapters))
    assert bad.returncode == 2 and "invalid choice: 'squared'" in bad.stderr
