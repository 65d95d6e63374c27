"""The task-arithmetic family: task_arithmetic, ties, dare_linear and dare_ties.

One implementation with parameters (as in mergekit): optional sparsification (magnitude = TIES,
random with rescale = DARE), optional sign consensus with a disjoint mean, then a weighted
combination. The semantics follow `peft.utils.merge_utils`. Each method yields one merged update
per module, kept as its best rank-r' factorisation (a single head).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from hydraopt.factors import LoraDelta, SharedLowRank, pad_rank, truncated_svd
from hydraopt.methods import register
from hydraopt.methods.base import MergeMethod

Sparsify = Literal["magnitude", "random"] | None


@dataclass(frozen=True)
class TaskArithmeticParams:
    """`weights` per task (default 1/N: the mean update); `rank` r' of the result."""

    rank: int | None = None
    weights: list[float] | None = None


@dataclass(frozen=True)
class TiesParams:
    """TIES: keep the `density` largest entries per task, elect signs, disjoint mean."""

    rank: int | None = None
    weights: list[float] | None = None
    density: float = 0.5
    majority_sign_method: Literal["total", "frequency"] = "total"


@dataclass(frozen=True)
class DareLinearParams:
    """DARE: keep each entry with probability `density` (seeded), rescale by 1/density, sum."""

    rank: int | None = None
    weights: list[float] | None = None
    density: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class DareTiesParams:
    """DARE dropping followed by TIES sign election and disjoint mean."""

    rank: int | None = None
    weights: list[float] | None = None
    density: float = 0.5
    majority_sign_method: Literal["total", "frequency"] = "total"
    seed: int = 0


def magnitude_prune(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round-down `density` share of entries with the largest magnitude."""
    keep = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[torch.topk(tensor.abs().reshape(-1), k=keep).indices] = 1
    return tensor * mask.reshape(tensor.shape)


def random_prune(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability `density`, rescaled by 1/density (DARE)."""
    mask = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * mask / density


def majority_sign_mask(stacked: torch.Tensor, method: str) -> torch.Tensor:
    """Entries whose sign agrees with the elected sign ("total": sum, "frequency": sign count)."""
    sign = stacked.sign()
    votes = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(votes >= 0, 1, -1)


def generalized_task_arithmetic(
    task_tensors: torch.Tensor,
    weights: torch.Tensor,
    *,
    sparsify: Sparsify = None,
    density: float = 1.0,
    sign_method: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge stacked task tensors (N × ...) into one tensor; pure and device-agnostic."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if sparsify == "magnitude" and density < 1:
        task_tensors = torch.stack([magnitude_prune(t, density) for t in task_tensors])
    elif sparsify == "random" and density < 1:
        task_tensors = torch.stack([random_prune(t, density, generator) for t in task_tensors])
    weighted = task_tensors * weights.reshape(-1, *([1] * (task_tensors.dim() - 1)))
    if sign_method is None:
        return weighted.sum(dim=0)
    mask = majority_sign_mask(task_tensors, sign_method)
    return (weighted * mask).sum(dim=0) / mask.sum(dim=0).clamp(min=1.0)


def task_weights(params, count: int, default: float, device: torch.device) -> torch.Tensor:
    weights = [default] * count if params.weights is None else list(params.weights)
    if len(weights) != count:
        raise ValueError(f"weights has {len(weights)} entries for {count} tasks")
    return torch.tensor(weights, dtype=torch.float32, device=device)


def dense_to_single_head(merged: torch.Tensor, rank: int) -> SharedLowRank:
    """Best rank-`rank` factorisation of a dense merged update, as one head."""
    u, s, vh = torch.linalg.svd(merged, full_matrices=False)
    keep = min(rank, s.shape[0])
    return pad_rank(SharedLowRank(vh[:keep], (u[:, :keep] * s[:keep]).unsqueeze(0)), rank)


def merge_task_arithmetic(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: TaskArithmeticParams
) -> SharedLowRank:
    """Σ w_i B_i A_i is itself factored ([w_i B_i] · [A_i]): no dense update is formed."""
    weights = task_weights(params, len(deltas), 1.0 / len(deltas), deltas[0].A.device)
    stacked_b = torch.cat([w * d.B for w, d in zip(weights, deltas)], dim=1)
    stacked_a = torch.cat([d.A for d in deltas], dim=0)
    return truncated_svd(stacked_b, stacked_a, params.rank)


def dense_merge(sparsify: Sparsify, with_signs: bool, default_weight: float | None):
    """A merge_module for one member of the family that needs dense updates."""

    def merge_module(deltas: Sequence[LoraDelta], assignment: Sequence[int], params) -> SharedLowRank:
        device = deltas[0].A.device
        default = 1.0 / len(deltas) if default_weight is None else default_weight
        generator = None
        if sparsify == "random":
            generator = torch.Generator(device=device).manual_seed(params.seed)
        merged = generalized_task_arithmetic(
            torch.stack([d.dense() for d in deltas]),
            task_weights(params, len(deltas), default, device),
            sparsify=sparsify,
            density=params.density,
            sign_method=params.majority_sign_method if with_signs else None,
            generator=generator,
        )
        return dense_to_single_head(merged, params.rank)

    return merge_module


register(
    MergeMethod(
        "task_arithmetic", TaskArithmeticParams, merge_task_arithmetic, description="weighted sum (mean)"
    )
)
# Sign election already averages, so TIES-style methods default to weight 1 per task.
register(MergeMethod("ties", TiesParams, dense_merge("magnitude", True, 1.0), description="TIES"))
register(MergeMethod("dare_linear", DareLinearParams, dense_merge("random", False, None), description="DARE"))
register(
    MergeMethod("dare_ties", DareTiesParams, dense_merge("random", True, 1.0), description="DARE + TIES")
)
