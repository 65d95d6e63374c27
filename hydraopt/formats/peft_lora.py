"""PEFT LoRA folders: `adapter_config.json` + `adapter_model.safetensors`, in and out.

Loading normalises every module to ΔW = s·B·A with s = lora_alpha/r (alpha/√r for rsLoRA),
honouring `rank_pattern` and `alpha_pattern` the way PEFT matches them. PEFT VeRA folders load
as the LoRA they amount to (`hydraopt.formats.peft_vera`). Features that cannot be merged are
reported on the adapter, never silently dropped.
"""

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from hydraopt.adapter import Adapter
from hydraopt.errors import CorruptAdapterError, UnsafeFormatError, UnsupportedFeatureError
from hydraopt.factors import LoraDelta
from hydraopt.formats.hub import HubAccess, Snapshot, parse_hub_uri, snapshot
from hydraopt.formats.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PEFT_FILES, PEFT_PREFIX
from hydraopt.formats.peft_vera import vera_deltas
from hydraopt.formats.safetensors_io import PICKLE_SUFFIXES, read_safetensors, weight_shapes

ADAPTER_TYPES = ("LORA", "VERA")  # both merge as LoRA factors
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
UNSUPPORTED_KEYS = {
    "lora_magnitude_vector": "DoRA magnitude vectors (use_dora)",
    "lora_B.bias": "LoRA bias (lora_bias)",
    "lora_embedding_": "embedding LoRA",
    "modules_to_save": "modules_to_save (fully trained modules)",
}


def pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank/alpha pattern lookup: a key matches a module name or its dotted suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_config(folder: Path) -> dict:
    """Parse and sanity-check adapter_config.json."""
    path = folder / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptAdapterError(f"{folder}: no {ADAPTER_CONFIG_FILE}; not a PEFT adapter folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptAdapterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CorruptAdapterError(f"{path}: expected a JSON object")
    peft_type = config.get("peft_type")
    if peft_type not in ADAPTER_TYPES:
        raise UnsupportedFeatureError(
            f"{path}: peft_type {peft_type!r} is not supported ({' or '.join(ADAPTER_TYPES)} only)"
        )
    checks = {
        "r": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "lora_alpha": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
        "base_model_name_or_path": lambda v: isinstance(v, str) and v != "",
        "use_rslora": lambda v: isinstance(v, bool),
        "rank_pattern": lambda v: isinstance(v, dict),
        "alpha_pattern": lambda v: isinstance(v, dict),
        "save_projection": lambda v: isinstance(v, bool),
    }
    required = {"r", "base_model_name_or_path"} | ({"lora_alpha"} if peft_type == "LORA" else set())
    for key, ok in checks.items():
        if key not in config or config[key] is None:
            if key in required:
                raise CorruptAdapterError(f"{path}: missing required field {key!r}")
            continue
        if not ok(config[key]):
            raise CorruptAdapterError(f"{path}: field {key!r} has invalid value {config[key]!r}")
    return config


def config_features(config: dict) -> list[str]:
    """Unsupported features announced by the config."""
    found = []
    if config.get("use_dora"):
        found.append("DoRA magnitude vectors (use_dora)")
    if config.get("lora_bias"):
        found.append("LoRA bias (lora_bias)")
    if config.get("modules_to_save"):
        found.append("modules_to_save (fully trained modules)")
    return found


def adapter_digest(config: dict, weights: bytes) -> str:
    """sha256 over the canonical config JSON and the weights file: the adapter's identity."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\0")
    digest.update(weights)
    return digest.hexdigest()


def find_weights(folder: Path) -> Path:
    """The safetensors weights file; refuses folders that only hold pickle checkpoints."""
    weights = folder / ADAPTER_WEIGHTS_FILE
    if weights.is_file():
        return weights
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise UnsafeFormatError(
            f"{folder / pickled[0]}: pickle-based checkpoints are never loaded (unpickling runs "
            f"code); provide {ADAPTER_WEIGHTS_FILE}"
        )
    raise CorruptAdapterError(f"{folder}: no {ADAPTER_WEIGHTS_FILE}")


def split_factors(tensors: dict[str, torch.Tensor], origin: str) -> tuple[dict, list[str]]:
    """Group tensors into {module: {"A": t, "B": t}}; return unsupported features seen."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = set()
    for key, tensor in tensors.items():
        feature = next((f for marker, f in UNSUPPORTED_KEYS.items() if marker in key), None)
        if feature:
            unsupported.add(feature)
            continue
        match = LORA_KEY.match(key)
        if not match:
            raise CorruptAdapterError(f"{origin}: tensor {key!r} is not a LoRA factor")
        if tensor.dim() != 2:
            raise CorruptAdapterError(
                f"{origin}: LoRA factor {key!r} has shape {list(tensor.shape)}, expected 2-D"
            )
        module = match["module"].removeprefix(PEFT_PREFIX)
        if match["part"] in factors.setdefault(module, {}):
            raise CorruptAdapterError(f"{origin}: module {module!r} has more than one lora_{match['part']}")
        factors[module][match["part"]] = tensor
    if not factors:
        raise CorruptAdapterError(f"{origin}: no LoRA factors found")
    return factors, sorted(unsupported)


def normalise(factors: dict, config: dict, origin: str) -> dict[str, LoraDelta]:
    """Fold each module's scale into B, checking ranks against the config."""
    deltas = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise CorruptAdapterError(f"{origin}: module {module!r} lacks lora_{'B' if 'A' in pair else 'A'}")
        a, b = pair["A"].float(), pair["B"].float()
        rank = int(pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
        if a.shape[0] != rank or b.shape[1] != rank:
            raise CorruptAdapterError(
                f"{origin}: module {module!r} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, "
                f"but the config gives rank {rank}"
            )
        alpha = pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        deltas[module] = LoraDelta(a.contiguous(), (b * scale).contiguous())
    return deltas


def load_adapter(
    source: str | Path, *, task: str | None = None, base_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> Adapter:
    """Load a PEFT LoRA (or VeRA) adapter from a local folder (or `hf://repo[@revision]`).

    A VeRA adapter's modules take their input sizes from the base model: `base_shapes` (weight
    name -> shape), else the safetensors headers of the config's base model when it is a folder.
    """
    folder = resolve_source(source)
    if not folder.is_dir():
        if folder.is_file():
            refuse_pickle_or_file(folder)
        raise CorruptAdapterError(f"{folder}: adapter folder does not exist")
    config = read_config(folder)
    weights_path = find_weights(folder)
    tensors, raw = read_safetensors(weights_path)
    if config["peft_type"] == "VERA":
        shapes = vera_base_shapes(config, weights_path) if base_shapes is None else base_shapes
        modules, unsupported = vera_deltas(tensors, config, shapes, str(weights_path)), []
    else:
        factors, unsupported = split_factors(tensors, str(weights_path))
        modules = normalise(factors, config, str(weights_path))
    dtype = next(iter(tensors.values())).dtype
    return Adapter(
        name=folder.name,
        base_model=config["base_model_name_or_path"],
        revision=config.get("revision"),
        adapter_type="LORA",
        modules=modules,
        dtype=dtype,
        sha256=adapter_digest(config, raw),
        config=config,
        path=folder,
        unsupported=tuple(sorted(set(unsupported) | set(config_features(config)))),
        task=task,
    )


def vera_base_shapes(config: dict, origin: Path) -> dict[str, tuple[int, ...]]:
    """The weight shapes of a VeRA adapter's base model, when its config names a local folder."""
    base = Path(config["base_model_name_or_path"])
    if not base.is_dir():
        raise UnsupportedFeatureError(
            f"{origin}: a VeRA adapter's module input sizes come from its base model, and "
            f"{config['base_model_name_or_path']!r} is not a local folder; pass the base model's shapes"
        )
    return weight_shapes(base)


def refuse_pickle_or_file(path: Path) -> None:
    """A file was given where a folder was expected: refuse pickles by name, else explain."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFormatError(f"{path}: pickle-based checkpoints are never loaded (unpickling runs code)")
    raise CorruptAdapterError(f"{path}: expected an adapter folder, got a file")


def resolve_source(source: str | Path) -> Path:
    """A local folder as is; `hf://repo[@revision]` downloaded into huggingface_hub's cache."""
    text = str(source)
    if not text.startswith("hf://"):
        return Path(source)
    return download_hub_adapter(text, HubAccess.from_env()).folder


def download_hub_adapter(uri: str, access: HubAccess, extra_files: tuple[str, ...] = ()) -> Snapshot:
    """The config and safetensors weights of adapter `hf://org/repo[@revision]`, pinned to a commit.

    `extra_files` are fetched too where the repo has them; nothing else is ever requested (see
    `hydraopt.formats.hub`). A repo with only pickle weights is refused.
    """
    repo, revision = parse_hub_uri(uri)
    found = snapshot(repo, revision, {*PEFT_FILES, *extra_files}.__contains__, access)
    if ADAPTER_WEIGHTS_FILE not in found.files and found.pickles:
        raise UnsafeFormatError(
            f"{found.uri}: only pickle-based weights ({', '.join(found.pickles)}); they are never "
            f"loaded (unpickling runs code), provide {ADAPTER_WEIGHTS_FILE}"
        )
    if ADAPTER_CONFIG_FILE not in found.files:
        raise CorruptAdapterError(f"{found.uri}: no {ADAPTER_CONFIG_FILE}; not a PEFT adapter repo")
    return found


def write_peft_lora(
    folder: Path,
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int,
    template: dict,
    dtype: torch.dtype,
) -> None:
    """Write a standard PEFT LoRA with scale 1 (r = lora_alpha = rank) from (A, B) per module."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        key: template[key]
        for key in ("base_model_name_or_path", "revision", "task_type", "target_modules",
                    "layers_to_transform", "layers_pattern", "fan_in_fan_out")
        if key in template
    }  # fmt: skip
    config.update(
        peft_type="LORA", r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", use_rslora=False,
        use_dora=False, rank_pattern={}, alpha_pattern={}, inference_mode=True,
    )  # fmt: skip
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = {}
    for module, (a, b) in modules.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.to(dtype).contiguous()
    save_file(tensors, str(folder / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
