"""Loading PEFT LoRA folders: real PEFT files, normalisation, and every refusal."""

import json
import pickle
import shutil
import struct

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from bench.synthetic import make_peft_adapter
from hydraopt.adapter import check_mergeable
from hydraopt.errors import (
    CorruptAdapterError,
    IncompatibleAdaptersError,
    UnsafeFormatError,
    UnsupportedFeatureError,
)
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import merge_adapters


def peft_deltas(base, folder):
    """ΔW per module as PEFT itself computes it for the saved adapter."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), folder)
    return {
        name.removeprefix("base_model.model."): module.get_delta_weight("default")
        for name, module in model.named_modules()
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {})
    }


def test_deltas_equal_peft_get_delta_weight(tiny_base, peft_adapters):
    for folder in peft_adapters:
        adapter = load_adapter(folder)
        reference = peft_deltas(tiny_base, folder)
        assert set(adapter.modules) == set(reference)
        for name, delta in adapter.modules.items():
            torch.testing.assert_close(delta.dense(), reference[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"use_rslora": True},
        {"rank_pattern": {"q_proj": 6}, "alpha_pattern": {"layers.1.self_attn.v_proj": 3.0}},
    ],
    ids=["rslora", "rank_and_alpha_patterns"],
)
def test_scale_follows_rslora_and_patterns(tiny_base, tmp_path, options):
    folder = make_peft_adapter(tiny_base, tmp_path / "adapter", seed=5, rank=4, alpha=8, **options)
    adapter = load_adapter(folder)
    reference = peft_deltas(tiny_base, folder)
    for name, delta in adapter.modules.items():
        torch.testing.assert_close(delta.dense(), reference[name], rtol=1e-5, atol=1e-6)
    if "rank_pattern" in options:
        assert adapter.modules["model.layers.0.self_attn.q_proj"].rank == 6


def test_mixed_ranks_merge(peft_adapters):
    adapters = [load_adapter(p) for p in peft_adapters]
    assert sorted({a.max_rank for a in adapters}) == [2, 4, 8]
    result = merge_adapters(adapters, "hydraopt", heads=2)
    assert result.rank == 8 and result.heads == 2


def test_dora_is_reported_and_merge_refused_unless_allowed(tiny_base, tmp_path, peft_adapters):
    folder = make_peft_adapter(tiny_base, tmp_path / "dora", seed=9, rank=4, use_dora=True)
    adapter = load_adapter(folder)
    assert any("DoRA" in feature for feature in adapter.unsupported)
    others = [load_adapter(peft_adapters[0])]
    with pytest.raises(UnsupportedFeatureError, match="dora"):
        merge_adapters([adapter, *others])
    result = merge_adapters([adapter, *others], allow_unsupported=True)
    assert result.dropped_features == {"dora": list(adapter.unsupported)}


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path, peft_adapters):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(peft_adapters[0] / "adapter_config.json", folder)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UnsafeFormatError, match="adapter_model.bin"):
        load_adapter(folder)
    with pytest.raises(UnsafeFormatError):
        load_adapter(folder / "adapter_model.bin")
    assert not marker.exists()


def corrupt_copy(source, tmp_path, mutate):
    folder = tmp_path / "corrupt"
    shutil.copytree(source, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(mutate(weights.read_bytes()))
    return folder


def lying_offsets(data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + length :]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:5], "too short"),
        (lambda d: struct.pack("<Q", 10**12) + d[8:], "header claims"),
        (lambda d: d[:8] + b"{not json" + d[17:], "not valid JSON"),
        (lying_offsets, "needs .* bytes|overlaps|outside"),
        (lambda d: b"", "too short"),
    ],
    ids=["truncated", "tiny", "huge_header", "bad_json", "lying_offsets", "empty"],
)
def test_corrupt_safetensors_gives_clear_error(tmp_path, peft_adapters, mutate, message):
    folder = corrupt_copy(peft_adapters[0], tmp_path, mutate)
    with pytest.raises(CorruptAdapterError, match=message) as caught:
        load_adapter(folder)
    assert "adapter_model.safetensors" in str(caught.value)


def test_nan_tensor_is_refused(tmp_path, peft_adapters):
    folder = tmp_path / "nan"
    shutil.copytree(peft_adapters[0], folder)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors = {key: torch.full((4, 64), float("nan")), key.replace("lora_A", "lora_B"): torch.zeros(64, 4)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CorruptAdapterError, match="NaN"):
        load_adapter(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"r": "four"}, "'r' has invalid value"),
        ({"lora_alpha": None, "base_model_name_or_path": None}, "missing required field"),
        ({"peft_type": "IA3"}, "not supported"),
        ({"r": 8}, "config gives rank 8"),
    ],
)
def test_bad_config_is_refused(tmp_path, peft_adapters, edit, message):
    folder = tmp_path / "badconfig"
    shutil.copytree(peft_adapters[0], folder)
    config = json.loads((folder / "adapter_config.json").read_text()) | edit
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises((CorruptAdapterError, UnsupportedFeatureError), match=message):
        load_adapter(folder)


def test_non_lora_tensor_is_refused(tmp_path, peft_adapters):
    folder = tmp_path / "notlora"
    shutil.copytree(peft_adapters[0], folder)
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CorruptAdapterError, match="not a LoRA factor"):
        load_adapter(folder)


def test_incompatible_adapters_are_refused_naming_both(tiny_base, tmp_path, peft_adapters):
    other_base = tmp_path / "other-base"
    shutil.copytree(peft_adapters[1], other_base)
    config = json.loads((other_base / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/else"
    (other_base / "adapter_config.json").write_text(json.dumps(config))
    first = load_adapter(peft_adapters[0])
    with pytest.raises(IncompatibleAdaptersError, match="adapter-0-r4.*other-base.*base model"):
        check_mergeable([first, load_adapter(other_base)])

    model = LlamaForCausalLM.from_pretrained(tiny_base)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "gate_proj"])).save_pretrained(
        tmp_path / "other-shapes"
    )
    with pytest.raises(IncompatibleAdaptersError, match="adapter-0-r4.*other-shapes.*modules"):
        merge_adapters([first, load_adapter(tmp_path / "other-shapes")])
