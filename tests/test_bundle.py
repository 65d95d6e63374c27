"""Bundles: the exported task adapters are real PEFT LoRAs; ids are content-addressed."""

import copy
import json

import pytest
import torch

from hydraopt.errors import BundleError
from hydraopt.formats.bundle import read_bundle, write_bundle
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import merge_adapters
from tests.bundle_checks import assert_exports_match_the_factors


@pytest.fixture(scope="module")
def adapters(peft_adapters):
    return [load_adapter(p) for p in peft_adapters]


def test_task_adapter_loads_in_peft_and_matches_shared_factors_by_hand(tiny_base, adapters, tmp_path):
    result = merge_adapters(adapters, "hydraopt", heads=2, rank=6)
    manifest = write_bundle(adapters, result, tmp_path / "bundle")
    bundle = read_bundle(tmp_path / "bundle")
    assert bundle.manifest == manifest
    assert_exports_match_the_factors(bundle, tiny_base)
    module = next(iter(bundle.modules))
    for task in result.tasks:  # the by-hand update is B'_head A'
        shared = bundle.modules[module]
        torch.testing.assert_close(
            bundle.task_delta(task, module).dense(), shared.B[bundle.head_of(task)] @ shared.A
        )


def test_bundle_tensors_and_manifest_follow_the_format(adapters, tmp_path):
    result = merge_adapters(adapters, "hydraopt", heads=2)
    manifest = write_bundle(adapters, result, tmp_path / "b", metrics={"x": {"relative_error": 0.1}})
    bundle = read_bundle(tmp_path / "b")
    module = "model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(bundle.modules[module].A, result.modules[module].A)
    torch.testing.assert_close(bundle.modules[module].B, result.modules[module].B)
    assert [m["task"] for m in manifest["members"]] == [a.name for a in adapters]
    assert {m["head"] for m in manifest["members"]} == {0, 1}
    assert manifest["base_model"]["name"] == adapters[0].base_model
    expected_params = sum(
        8 * (d_in + 2 * d_out) for d_out, d_in in [(64, 64), (32, 64), (32, 64), (64, 64)] * 2
    )
    assert manifest["storage"]["bundle_params"] == expected_params
    assert manifest["storage"]["source_params"] == sum(a.num_params for a in adapters)
    for task in result.tasks:
        config = json.loads((tmp_path / "b" / "tasks" / task / "adapter_config.json").read_text())
        assert config["r"] == config["lora_alpha"] == 8


def test_bundle_id_is_content_addressed_and_rewrites_are_noops(adapters, tmp_path):
    result = merge_adapters(adapters, "hydraopt", heads=2)
    first = write_bundle(adapters, result, tmp_path / "b")
    again = write_bundle(adapters, merge_adapters(adapters, "hydraopt", heads=2), tmp_path / "b")
    assert again == first
    other = write_bundle(adapters, merge_adapters(adapters, "hydraopt", heads=3), tmp_path / "c")
    assert other["bundle_id"] != first["bundle_id"]
    with pytest.raises(BundleError, match="refusing to overwrite"):
        write_bundle(adapters, merge_adapters(adapters, "hydraopt", heads=3), tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


def test_unsafe_task_name_is_refused(adapters, tmp_path):
    renamed = [copy.copy(a) for a in adapters]
    renamed[0].task = "../escape"
    with pytest.raises(BundleError, match="not a safe folder name"):
        write_bundle(renamed, merge_adapters(renamed, "hydraopt"), tmp_path / "b")
    assert not (tmp_path / "b").exists() and not (tmp_path / "escape").exists()
