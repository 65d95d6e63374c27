"""hydraopt: load PEFT LoRA adapters, merge them (HydraOpt and baselines), write bundles.

Needs only torch and safetensors; no database, no orchestration.
"""

from hydraopt.formats.bundle import read_bundle, write_bundle
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import MergeResult, merge_adapters
from hydraopt.methods import METHODS
from hydraopt.metrics import reconstruction_errors
from hydraopt.storage import storage_report

__all__ = [
    "METHODS",
    "MergeResult",
    "load_adapter",
    "merge_adapters",
    "read_bundle",
    "reconstruction_errors",
    "storage_report",
    "write_bundle",
]
