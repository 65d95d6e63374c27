"""The task-arithmetic family: task_arithmetic, ties, dare_linear and dare_ties.

One implementation with parameters (as in mergekit): optional sparsification (magnitude = TIES,
random with rescale = DARE), optional sign election with a disjoint mean, then a weighted
combination. The semantics follow `peft.utils.merge_utils`. Each method yields one merged update
per module, kept as its best rank-r' factorisation (a single head).
"""

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from hydraopt.factors import LoraDelta, SharedLowRank, pad_rank, truncated_svd
from hydraopt.methods.base import RANK_HELP, MergeMethod, knob

Sparsify = Literal["magnitude", "random"]
SIGN_METHODS = ("total", "frequency")
SIGN_HELP = "sign election: by the summed update (total) or by count (frequency)"


@dataclass(frozen=True)
class TaskArithmeticParams:
    """Σ w_i ΔW_i; `weights` default 1/N (the mean update); `rank` r' of the result."""

    rank: int | None = knob(help=RANK_HELP)
    weights: list[float] | None = knob(help="per-task weights, comma-separated in the sources' order")


@dataclass(frozen=True)
class TiesParams:
    """TIES: keep the `density` largest entries per task, elect signs, disjoint mean.

    `weights` default 1.0 (the disjoint mean already averages).
    """

    rank: int | None = knob(help=RANK_HELP)
    weights: list[float] | None = knob(help="per-task weights, comma-separated in the sources' order")
    density: float = knob(0.5, help="fraction of each update's entries kept by pruning")
    majority_sign_method: str = knob("total", choices=SIGN_METHODS, help=SIGN_HELP)


@dataclass(frozen=True)
class DareLinearParams:
    """DARE: keep each entry with probability `density` (seeded), rescale by 1/density, sum.

    `weights` default 1/N (the mean update).
    """

    rank: int | None = knob(help=RANK_HELP)
    weights: list[float] | None = knob(help="per-task weights, comma-separated in the sources' order")
    density: float = knob(0.5, help="fraction of each update's entries kept by pruning")
    seed: int = knob(0, help="seed of the random drop")


@dataclass(frozen=True)
class DareTiesParams:
    """DARE dropping, then TIES sign election and disjoint mean; `weights` default 1.0."""

    rank: int | None = knob(help=RANK_HELP)
    weights: list[float] | None = knob(help="per-task weights, comma-separated in the sources' order")
    density: float = knob(0.5, help="fraction of each update's entries kept by pruning")
    majority_sign_method: str = knob("total", choices=SIGN_METHODS, help=SIGN_HELP)
    seed: int = knob(0, help="seed of the random drop")


# Each member: (sparsify, elect signs, default weights 1/N rather than 1.0).
FAMILY: dict[str, tuple[Sparsify | None, bool, bool]] = {
    "task_arithmetic": (None, False, True),
    "ties": ("magnitude", True, False),
    "dare_linear": ("random", False, True),
    "dare_ties": ("random", True, False),
}


@dataclass(frozen=True)
class SubspaceMergeParams:
    """A family member (`merge`) applied to the tasks' coordinates in a shared subspace (Core
    Space, KnOTS), with that member's knobs; `weights` default as the member's do."""

    rank: int | None = knob(help=RANK_HELP)
    merge: str = knob("ties", choices=tuple(FAMILY), help="the merge applied in the subspace")
    weights: list[float] | None = knob(help="per-task weights, comma-separated in the sources' order")
    density: float = knob(0.5, help="fraction of each update's entries kept by pruning")
    majority_sign_method: str = knob("total", choices=SIGN_METHODS, help=SIGN_HELP)
    seed: int = knob(0, help="seed of the random drop")

    def __post_init__(self) -> None:
        if self.merge not in FAMILY:
            raise ValueError(f"merge must be one of {tuple(FAMILY)}, got {self.merge!r}")


BaselineParams = TaskArithmeticParams | TiesParams | DareLinearParams | DareTiesParams | SubspaceMergeParams


def magnitude_prune(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round-down `density` share of entries with the largest magnitude."""
    keep = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[torch.topk(tensor.abs().reshape(-1), k=keep).indices] = 1
    return tensor * mask.reshape(tensor.shape)


def random_prune(tensor: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """Keep each entry with probability `density`, rescaled by 1/density (DARE)."""
    mask = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * mask / density


def majority_sign_mask(stacked: torch.Tensor, method: str) -> torch.Tensor:
    """Entries whose sign agrees with the elected sign ("total": sum, "frequency": sign count)."""
    if method not in SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be one of {SIGN_METHODS}, got {method!r}")
    sign = stacked.sign()
    votes = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(votes >= 0, 1, -1)


def generalized_task_arithmetic(
    task_tensors: torch.Tensor,
    weights: torch.Tensor,
    *,
    sparsify: Sparsify | None = None,
    density: float = 1.0,
    sign_method: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge stacked task tensors (N × ...) into one tensor, as PEFT's merge_utils does.

    Prune each task (`density` < 1), elect signs on the pruned unweighted tensors, weight, then
    sum (no `sign_method`) or take the disjoint mean. Random pruning draws from `generator`
    (the global RNG when None), task by task in order.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if weights.shape != task_tensors.shape[:1]:
        raise ValueError(f"weights has shape {tuple(weights.shape)} for {len(task_tensors)} tasks")
    if sparsify == "magnitude" and density < 1:
        task_tensors = torch.stack([magnitude_prune(t, density) for t in task_tensors])
    elif sparsify == "random" and density < 1:
        task_tensors = torch.stack([random_prune(t, density, generator) for t in task_tensors])
    elif sparsify not in (None, "magnitude", "random"):
        raise ValueError(f"sparsify must be 'magnitude', 'random' or None, got {sparsify!r}")
    weighted = task_tensors * weights.reshape(-1, *([1] * (task_tensors.dim() - 1)))
    if sign_method is None:
        return weighted.sum(dim=0)
    mask = majority_sign_mask(task_tensors, sign_method)
    return (weighted * mask).sum(dim=0) / mask.sum(dim=0).clamp(min=1)


def task_weights(params: BaselineParams, count: int, default: float, device: torch.device) -> torch.Tensor:
    """`params.weights` (or `default` per task) as a float32 tensor; one per task."""
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
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: TaskArithmeticParams, module: str = ""
) -> SharedLowRank:
    """Σ w_i B_i A_i is itself factored ([w_i B_i] · [A_i]): no dense update is formed."""
    weights = task_weights(params, len(deltas), 1.0 / len(deltas), deltas[0].A.device)
    stacked_b = torch.cat([w * d.B for w, d in zip(weights, deltas)], dim=1)
    stacked_a = torch.cat([d.A for d in deltas], dim=0)
    return truncated_svd(stacked_b, stacked_a, params.rank)


def module_seed(seed: int, module: str) -> int:
    """`seed` mixed with a stable hash of the module name (`seed` itself for no name)."""
    return seed ^ zlib.crc32(module.encode()) if module else seed


def merge_family(
    stacked: torch.Tensor, member: str, params: BaselineParams, module: str = ""
) -> torch.Tensor:
    """Family member `member` over stacked task tensors (N × ...), with `params`' knobs.

    DARE seeds a generator per module from `params.seed` and the module name: reproducible, yet
    no two modules share a drop mask.
    """
    sparsify, with_signs, mean_weights = FAMILY[member]
    device = stacked.device
    generator = None
    if sparsify == "random":
        generator = torch.Generator(device=device).manual_seed(module_seed(params.seed, module))
    return generalized_task_arithmetic(
        stacked,
        task_weights(params, len(stacked), 1.0 / len(stacked) if mean_weights else 1.0, device),
        sparsify=sparsify,
        density=getattr(params, "density", 1.0),
        sign_method=params.majority_sign_method if with_signs else None,
        generator=generator,
    )


def dense_merge(member: str) -> Callable[..., SharedLowRank]:
    """The merge_module of a family member that prunes dense updates."""

    def merge_module(
        deltas: Sequence[LoraDelta], assignment: Sequence[int], params: BaselineParams, module: str = ""
    ) -> SharedLowRank:
        merged = merge_family(torch.stack([d.dense() for d in deltas]), member, params, module)
        return dense_to_single_head(merged, params.rank)

    return merge_module


TASK_ARITHMETIC = MergeMethod(
    "task_arithmetic",
    TaskArithmeticParams,
    merge_task_arithmetic,
    description="weighted sum of the task updates (default: their mean)",
)
TIES = MergeMethod(
    "ties",
    TiesParams,
    dense_merge("ties"),
    description="TIES: magnitude pruning, sign election, disjoint mean",
)
DARE_LINEAR = MergeMethod(
    "dare_linear",
    DareLinearParams,
    dense_merge("dare_linear"),
    description="DARE: seeded random drop with rescale, then weighted sum (default: mean)",
)
DARE_TIES = MergeMethod(
    "dare_ties",
    DareTiesParams,
    dense_merge("dare_ties"),
    description="DARE drop with rescale, then sign election and disjoint mean",
)
