"""Weight-space metrics of a merge: relative reconstruction error per module and per task."""

from collections.abc import Sequence

import torch

from hydraopt.adapter import Adapter
from hydraopt.factors import LoraDelta, residual_squared_norm, squared_norm
from hydraopt.merge import MergeResult


def as_float64(delta: LoraDelta) -> LoraDelta:
    return delta.to(torch.device("cpu"), torch.float64)


def reconstruction_errors(adapters: Sequence[Adapter], result: MergeResult) -> dict[str, dict]:
    """Per task: Σ_m‖ΔW−ΔW'‖² / Σ_m‖ΔW‖² ("relative_error") and the same ratio per module."""
    report = {}
    for adapter in adapters:
        task = adapter.task_name
        residual_total, norm_total, per_module = 0.0, 0.0, {}
        for name, delta in adapter.modules.items():
            source = as_float64(delta)
            residual = residual_squared_norm(source, as_float64(result.task_delta(task, name))).item()
            norm = squared_norm(source).item()
            per_module[name] = residual / norm if norm > 0 else 0.0
            residual_total += residual
            norm_total += norm
        report[task] = {
            "relative_error": residual_total / norm_total if norm_total > 0 else 0.0,
            "modules": per_module,
        }
    return report
