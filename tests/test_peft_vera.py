"""PEFT VeRA adapters as input: each module's ΔW = Λ_b B Λ_d A from the saved projections, equal to
PEFT's own VeRA forward on a tiny Llama, merged like any LoRA; folders that cannot be read are refused."""

import copy
import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from bench.synthetic import make_peft_vera_adapter
from hydraopt.errors import UnsupportedFeatureError
from hydraopt.formats.bundle import read_bundle, write_bundle
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.formats.safetensors_io import weight_shapes
from hydraopt.merge import merge_adapters
from tests.bundle_checks import TOKENS
from tests.conftest import CACHE

TARGETS = ("q_proj", "v_proj", "down_proj")  # down_proj reads 128 inputs, the others 64: sliced projections


@pytest.fixture(scope="module")
def vera_folders(tiny_base):
    return [
        make_peft_vera_adapter(tiny_base, CACHE / f"vera-{seed}", seed=seed, rank=8, targets=TARGETS)
        for seed in (1, 2)
    ]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(TOKENS).logits


def test_the_loaded_updates_are_peft_s_own_vera_forward(tiny_base, vera_folders):
    base = LlamaForCausalLM.from_pretrained(tiny_base)
    for folder in vera_folders:
        adapter = load_adapter(folder)
        assert adapter.adapter_type == "LORA" and adapter.max_rank == 8
        assert {name.rsplit(".", 1)[1] for name in adapter.modules} == set(TARGETS)
        by_hand = copy.deepcopy(base)
        with torch.no_grad():
            for name, delta in adapter.modules.items():
                by_hand.get_submodule(name).weight += delta.dense()
        peft_vera = PeftModel.from_pretrained(copy.deepcopy(base), folder)
        torch.testing.assert_close(logits(by_hand), logits(peft_vera), rtol=1e-4, atol=1e-5)
        assert torch.linalg.norm(logits(by_hand) - logits(base)) > 1e-2  # the update is not zero


def test_vera_adapters_merge_and_their_exports_are_loras_equal_to_the_sources(
    tiny_base, vera_folders, tmp_path
):
    adapters = [load_adapter(folder, task=f"vera-{i}") for i, folder in enumerate(vera_folders)]
    result = merge_adapters(adapters, "hydraopt", rank=16)  # K = N, r' = Σ r: lossless
    write_bundle(adapters, result, tmp_path / "bundle")
    bundle = read_bundle(tmp_path / "bundle")
    base = LlamaForCausalLM.from_pretrained(tiny_base)
    for adapter, folder in zip(adapters, vera_folders):
        config = json.loads((bundle.task_adapter_path(adapter.task_name) / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA"
        exported = PeftModel.from_pretrained(copy.deepcopy(base), bundle.task_adapter_path(adapter.task_name))
        source = PeftModel.from_pretrained(copy.deepcopy(base), folder)
        torch.testing.assert_close(logits(exported), logits(source), rtol=1e-3, atol=1e-4)


def test_a_folder_without_its_projections_is_refused_saying_so(tiny_base, tmp_path):
    folder = make_peft_vera_adapter(tiny_base, tmp_path / "no-projection", seed=3, save_projection=False)
    with pytest.raises(UnsupportedFeatureError, match="save_projection=True"):
        load_adapter(folder)


def test_a_hub_named_base_model_needs_its_shapes(tiny_base, vera_folders, tmp_path):
    folder = shutil.copytree(vera_folders[0], tmp_path / "hub-base")
    config_path = folder / "adapter_config.json"
    config_path.write_text(
        json.dumps(json.loads(config_path.read_text()) | {"base_model_name_or_path": "org/m"})
    )
    with pytest.raises(UnsupportedFeatureError, match="not a local folder"):
        load_adapter(folder)
    given = load_adapter(folder, base_shapes=weight_shapes(tiny_base))
    assert (
        given.base_model == "org/m" and given.modules.keys() == load_adapter(vera_folders[0]).modules.keys()
    )
