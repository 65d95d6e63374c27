"""Data-aware refinement of a shared-A' merge (DESIGN: "optional refinement on a data-aware loss").

The closed form minimises Σ_i w_i ‖ΔW_i − B'_{c(i)} A'‖²_F, which weighs every input direction
equally. A module only ever sees its inputs x, so what matters is the output error
‖(ΔW_i − B'_{c(i)} A') x‖² on task i's own inputs: Σ_i w_i tr(E_i C_i E_iᵀ) with E_i the error and
C_i = E[x xᵀ] over task i's calibration tokens. Everything stays in the span Q of the stacked A_i
rows, as the closed form does: A' = G Qᵀ, ΔW_i = T_i Qᵀ, and only C̃_i = Qᵀ C_i Q (R×R) is needed.

Alternating least squares from the closed form, each step exact, so the loss never increases:
- heads: B'_k = (Σ_{i∈k} w_i T_i C̃_i Gᵀ)(Σ_{i∈k} w_i G C̃_i Gᵀ)⁻¹;
- shared: Σ_i w_i S_{c(i)} G C̃_i = Σ_i w_i B'_{c(i)}ᵀ T_i C̃_i with S_k = B'_kᵀ B'_k, a linear
  system of size r'·R (vec(S G C) = (C ⊗ S) vec(G)).
`ridge` mixes a little of the data-free loss into every C̃_i (directions the calibration never
visited still count), so a small calibration set cannot pull the merge far from the closed form.
With `weighting="relative"` w_i = 1 / tr(T_i C̃_i T_iᵀ): each task's relative output error counts.
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hydraopt.adapter import Adapter
from hydraopt.factors import SharedLowRank
from hydraopt.merge import MergeResult


@dataclass(frozen=True)
class InputStatistics:
    """Per module an orthonormal basis Q (d_in×R) of the stacked A_i rows of the adapters it was
    collected for, and per task and module Qᵀ E[x xᵀ] Q (R×R) over the task's calibration tokens
    (see `hydraopt.evaluation.activations.input_statistics`)."""

    bases: dict[str, torch.Tensor]
    grams: dict[str, dict[str, torch.Tensor]]

    def in_basis(self, task: str, module: str, basis: torch.Tensor) -> torch.Tensor:
        """Task's statistics in `basis`, whose span must lie inside the collected one."""
        change = self.bases[module].T @ basis
        if torch.dist(self.bases[module] @ change, basis) > 1e-6 * basis.shape[1]:
            raise ValueError(f"{module}: the adapters are not those the input statistics were collected for")
        return change.T @ self.grams[task][module] @ change


def span_bases(adapters: Sequence[Adapter]) -> dict[str, torch.Tensor]:
    """Per module, an orthonormal basis Q (d_in×R) of the stacked A_i rows, float64 on the CPU."""
    bases = {}
    for name in sorted(adapters[0].modules):
        stacked_a = torch.cat([a.modules[name].A for a in adapters], dim=0).double().cpu()
        bases[name], _ = torch.linalg.qr(stacked_a.T)
    return bases


def refine(
    result: MergeResult,
    adapters: Sequence[Adapter],
    statistics: InputStatistics,
    *,
    iterations: int = 8,
    ridge: float = 0.01,
    progress: Callable[[int, int], None] | None = None,
) -> MergeResult:
    """`result` with A' and B' refined on each merged task's input `statistics`. `adapters` must
    hold every merged task's adapter; the statistics may cover more tasks (a superset's span)."""
    if result.method != "hydraopt":
        raise ValueError(f"only hydraopt results can be refined, not {result.method!r}")
    by_task = {a.task_name: a for a in adapters}
    missing = sorted(t for t in result.tasks if t not in by_task or t not in statistics.grams)
    if missing:
        raise ValueError(f"refine needs every merged task's adapter and input statistics; missing {missing}")
    ordered = [by_task[t] for t in result.tasks]
    heads = [result.assignment[t] for t in result.tasks]
    relative = result.params.get("weighting") == "relative"
    bases = span_bases(ordered)
    modules = {}
    for done, (name, basis) in enumerate(bases.items(), start=1):
        targets = [(a.modules[name].B.double() @ (a.modules[name].A.double() @ basis)) for a in ordered]
        grams = [regularised(statistics.in_basis(t, name, basis), ridge) for t in result.tasks]
        merged = result.modules[name]
        modules[name] = refine_module(merged, basis, targets, grams, heads, iterations, relative)
        if progress:
            progress(done, len(bases))
    params = {**result.params, "refine": {"iterations": iterations, "ridge": ridge}}
    return dataclasses.replace(result, params=params, modules=modules)


def regularised(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """C̃ normalised to unit mean eigenvalue, plus `ridge`·I."""
    size = gram.shape[0]
    scale = gram.trace() / size
    gram = gram / scale if scale > 0 else torch.zeros_like(gram)
    return gram + ridge * torch.eye(size, dtype=gram.dtype)


def refine_module(
    merged: SharedLowRank,
    basis: torch.Tensor,
    targets: Sequence[torch.Tensor],
    grams: Sequence[torch.Tensor],
    heads: Sequence[int],
    iterations: int,
    relative: bool,
) -> SharedLowRank:
    """ALS on Σ_i w_i tr((T_i − B'G) C̃_i (T_i − B'G)ᵀ) from the closed-form (A', B')."""
    shared = merged.A.double() @ basis  # G: r'×R
    head_b = merged.B.double().clone()  # K×d_out×r'
    weights = [
        1.0 / max(torch.sum((t @ g) * t).item(), 1e-300) if relative else 1.0
        for t, g in zip(targets, grams, strict=True)
    ]
    rank, size = shared.shape
    eye_r = torch.eye(rank, dtype=torch.float64)
    for _ in range(iterations):
        num = torch.zeros_like(head_b)
        den = torch.zeros(head_b.shape[0], rank, rank, dtype=torch.float64)
        for t, g, k, w in zip(targets, grams, heads, weights, strict=True):
            num[k] += w * (t @ g @ shared.T)
            den[k] += w * (shared @ g @ shared.T)
        for k in range(head_b.shape[0]):
            jitter = 1e-10 * den[k].trace().clamp_min(1e-300) * eye_r
            head_b[k] = torch.linalg.solve(den[k] + jitter, num[k].T).T
        system = torch.zeros(rank * size, rank * size, dtype=torch.float64)
        rhs = torch.zeros(rank, size, dtype=torch.float64)
        for t, g, k, w in zip(targets, grams, heads, weights, strict=True):
            system += w * torch.kron(g, head_b[k].T @ head_b[k])
            rhs += w * (head_b[k].T @ t @ g)
        jitter = 1e-10 * system.trace().clamp_min(1e-300) / system.shape[0]
        system.diagonal().add_(jitter)
        shared = torch.linalg.solve(system, rhs.T.reshape(-1)).reshape(size, rank).T
    return SharedLowRank((shared @ basis.T).float(), head_b.float())


def data_aware_loss(
    merged: SharedLowRank,
    basis: torch.Tensor,
    targets: Sequence[torch.Tensor],
    grams: Sequence[torch.Tensor],
    heads: Sequence[int],
) -> float:
    """Σ_i tr(E_i C̃_i E_iᵀ) in the span (for tests and reports)."""
    shared = merged.A.double() @ basis
    total = 0.0
    for t, g, k in zip(targets, grams, heads, strict=True):
        error = t - merged.B[k].double() @ shared
        total += torch.sum((error @ g) * error).item()
    return total
