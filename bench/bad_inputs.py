"""A corpus of bad adapter folders, generated from one good PEFT LoRA folder: what the catalog must refuse.

Every case is a folder with the good adapter's files, one of them broken in one way. Nothing here is
checked in: the files are written on demand (tests, `hydracat bench reliability`). The pickle case
carries a payload that would create `marker` if anything ever unpickled it.
"""

import json
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# Object keys a bucket may hold that no folder name may come from.
BAD_KEYS = (
    "adapters/escape/1/../../../etc/adapter_config.json",
    "/adapters/absolute/1/adapter_config.json",
    "adapters/control\x07char/1/adapter_config.json",
    "adapters/cafe\u0301/1/adapter_config.json",  # not NFC: looks like another folder's name
    "adapters/back\\slash/1/adapter_config.json",
)


class FileCreator:
    """Unpickling this calls open(marker, "w"): proof that a loader executed a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def with_header(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def header_of(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def first_key(tensors: dict[str, torch.Tensor], part: str) -> str:
    return next(key for key in sorted(tensors) if f".{part}." in key)


def corrupt_cases(marker: Path) -> dict[str, tuple[Callable[[Path], None], str]]:
    """case -> (how to break a copy of the good folder, words the refusal must contain, `|` = or)."""

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(folder / WEIGHTS)

    def put(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
        (folder / WEIGHTS).write_bytes(save(tensors))

    def edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            config = json.loads((folder / CONFIG).read_text())
            change(config)
            (folder / CONFIG).write_text(json.dumps(config))

        return apply

    def pickle_bin(folder: Path) -> None:
        (folder / WEIGHTS).unlink()
        (folder / "adapter_model.bin").write_bytes(pickle.dumps(FileCreator(marker)))

    def truncated(folder: Path) -> None:
        raw = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(raw[: len(raw) - 100])

    def lying_offsets(folder: Path) -> None:
        header, data = header_of((folder / WEIGHTS).read_bytes())
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 4096
        (folder / WEIGHTS).write_bytes(with_header(header, data))

    def lying_dtype(folder: Path) -> None:
        header, data = header_of((folder / WEIGHTS).read_bytes())
        name = next(k for k in header if k != "__metadata__")
        header[name]["dtype"] = "F64"
        (folder / WEIGHTS).write_bytes(with_header(header, data))

    def huge_header(folder: Path) -> None:
        raw = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])

    def non_finite(value: float) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            tensors = weights(folder)
            tensors[first_key(tensors, "lora_B")][0, 0] = value
            put(folder, tensors)

        return apply

    def rank_mismatch(folder: Path) -> None:
        tensors = weights(folder)
        key = first_key(tensors, "lora_B")
        tensors[key] = torch.cat([tensors[key], tensors[key][:, :1]], dim=1)
        put(folder, tensors)

    def wrong_width(folder: Path) -> None:
        tensors = weights(folder)
        key = first_key(tensors, "lora_A")
        tensors[key] = torch.cat([tensors[key], tensors[key][:, :1]], dim=1)
        put(folder, tensors)

    def not_lora(folder: Path) -> None:
        tensors = weights(folder)
        tensors["base_model.model.model.layers.0.mlp.down_proj.weight"] = torch.zeros(4, 4)
        put(folder, tensors)

    return {
        "pickle-bin": (pickle_bin, "pickle"),
        "truncated": (truncated, "truncated"),
        "lying-offsets": (lying_offsets, "bytes"),
        "lying-dtype": (lying_dtype, "bytes"),
        "huge-header": (huge_header, "header claims"),
        "nan-tensor": (non_finite(float("nan")), "NaN or Inf"),
        "inf-tensor": (non_finite(float("inf")), "NaN or Inf"),
        "rank-mismatch": (rank_mismatch, "rank"),
        "wrong-width": (wrong_width, "cannot be merged|does not match base weight"),
        "not-lora-keys": (not_lora, "not a LoRA factor"),
        "empty-weights": (lambda folder: (folder / WEIGHTS).write_bytes(b""), "too short"),
        "config-not-json": (lambda folder: (folder / CONFIG).write_text("{r: 8,"), "not valid JSON"),
        "config-wrong-type": (edit_config(lambda c: c.update(r="eight")), "invalid value"),
        "config-missing-field": (edit_config(lambda c: c.pop("base_model_name_or_path")), "missing"),
    }


def write_bad_adapters(good: Path, out: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """One broken copy of `good` per case under `out`: case -> (folder, the refusal's expected words)."""
    made = {}
    for case, (breaker, words) in corrupt_cases(marker).items():
        folder = out / case
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        breaker(folder)
        made[case] = (folder, words)
    return made


def refusal_matches(message: str, words: str) -> bool:
    """The refusal contains one of the `|`-separated alternatives of a case's words (case-insensitive)."""
    return any(alternative.lower() in message.lower() for alternative in words.split("|"))
