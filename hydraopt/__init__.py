"""hydraopt: load PEFT LoRA adapters, merge them (HydraOpt and baselines), write bundles.

Needs only torch and safetensors; no database, no orchestration. The names below are imported on
first use, so `import hydraopt.formats.layout` (file names and object keys) does not load torch.
"""

import importlib
from typing import Any

# name -> module that defines it
EXPORTS = {
    "METHODS": "hydraopt.methods",
    "MergeResult": "hydraopt.merge",
    "load_adapter": "hydraopt.formats.peft_lora",
    "merge_adapters": "hydraopt.merge",
    "read_bundle": "hydraopt.formats.bundle",
    "reconstruction_errors": "hydraopt.metrics",
    "storage_report": "hydraopt.storage",
    "write_bundle": "hydraopt.formats.bundle",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'hydraopt' has no attribute {name!r}")
    return getattr(importlib.import_module(EXPORTS[name]), name)
