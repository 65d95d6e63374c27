"""Read safetensors files only after checking the header against the file itself.

The header is parsed by hand first (length, JSON, dtypes, shapes, offsets that tile the data
region exactly), so a truncated or lying file gives a `CorruptAdapterError` naming the file
instead of a traceback from deep inside a reader. Pickle-based files are refused outright.
"""

import json
import math
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load

from hydraopt.errors import CorruptAdapterError, UnsafeFormatError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a model folder's *.safetensors files, from their headers only."""
    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def refuse_pickle(path: Path) -> None:
    """Raise if `path` names a pickle-based checkpoint."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFormatError(
            f"{path}: pickle-based checkpoints are never loaded (unpickling runs code); "
            "convert it to safetensors with a trusted tool first"
        )


def read_header(data: bytes, origin: str) -> dict[str, dict]:
    """The validated tensor table of a safetensors blob (metadata entry removed)."""
    if len(data) < 8:
        raise CorruptAdapterError(f"{origin}: {len(data)} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CorruptAdapterError(f"{origin}: header claims {header_len} bytes but the file has {len(data)}")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptAdapterError(f"{origin}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptAdapterError(f"{origin}: header is not a JSON object")
    header.pop("__metadata__", None)
    data_len = len(data) - 8 - header_len
    spans = []
    for name, entry in header.items():
        spans.append(check_entry(name, entry, data_len, origin))
    spans.sort()
    expected = 0
    for begin, end in spans:
        if begin != expected:
            raise CorruptAdapterError(f"{origin}: tensor data overlaps or leaves gaps at byte {begin}")
        expected = end
    if expected != data_len:
        raise CorruptAdapterError(
            f"{origin}: tensors cover {expected} of {data_len} data bytes (truncated or padded)"
        )
    return header


def check_entry(name: str, entry: object, data_len: int, origin: str) -> tuple[int, int]:
    """Check one header entry and return its (begin, end) data span."""
    if not isinstance(entry, dict):
        raise CorruptAdapterError(f"{origin}: entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CorruptAdapterError(f"{origin}: tensor {name!r} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CorruptAdapterError(f"{origin}: tensor {name!r} has invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise CorruptAdapterError(
            f"{origin}: tensor {name!r} has data offsets {offsets!r} outside the "
            f"{data_len}-byte data region (truncated or corrupt)"
        )
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CorruptAdapterError(
            f"{origin}: tensor {name!r} of shape {shape} {dtype} needs {nbytes} bytes, "
            f"offsets give {offsets[1] - offsets[0]}"
        )
    return offsets[0], offsets[1]


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], bytes]:
    """Load a safetensors file after validating it (floats must be finite); also its bytes."""
    refuse_pickle(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptAdapterError(f"{path}: cannot read ({exc.strerror})") from None
    return load_validated(data, str(path)), data


def load_validated(data: bytes, origin: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors blob whose header has been checked against the blob."""
    header = read_header(data, origin)
    try:
        tensors = load(data)
    except Exception as exc:  # the reader's own errors, after our checks passed
        raise CorruptAdapterError(f"{origin}: safetensors reader refused the file ({exc})") from None
    for name, tensor in tensors.items():
        if header[name]["dtype"] in FLOAT_DTYPES and not torch.isfinite(tensor).all():
            raise CorruptAdapterError(f"{origin}: tensor {name!r} contains NaN or Inf")
    return tensors
