"""Data-aware refinement of a shared-A' merge (DESIGN: "optional refinement on a data-aware loss").

The closed form minimises Σ_i w_i ‖ΔW_i − B'_{c(i)} A'‖²_F, which weighs every input direction
equally. A module only ever sees its inputs x, so what matters is the output error
‖(ΔW_i − B'_{c(i)} A') x‖² on task i's own inputs: Σ_i w_i tr(E_i C_i E_iᵀ) with E_i the error and
C_i = E[x xᵀ] over task i's calibration tokens. Everything stays in the span Q of the stacked A_i
rows, as the closed form does: A' = G Qᵀ, ΔW_i = T_i Qᵀ, and only C̃_i = Qᵀ C_i Q (R×R) is needed.

Alternating least squares from the closed form, each step exact, so the loss never increases:
- heads: B'_k = (Σ_{i∈k} w_i T_i C̃_i Gᵀ)(Σ_{i∈k} w_i G C̃_i Gᵀ)⁻¹;
- shared: Σ_i w_i S_{c(i)} G C̃_i = Σ_i w_i B'_{c(i)}ᵀ T_i C̃_i with S_k = B'_kᵀ B'_k, solved by
  conjugate gradients from the current G (never forming the r'R × r'R system, so large groups fit).
`ridge` mixes a little of the data-free loss into every C̃_i (directions the calibration never
visited still count), so a small calibration set cannot pull the merge far from the closed form.
With `weighting="relative"` w_i = 1 / tr(T_i C̃_i T_iᵀ): each task's relative output error counts.
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

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
    for name, basis in bases.items():
        targets = [(a.modules[name].B.double() @ (a.modules[name].A.double() @ basis)) for a in ordered]
        grams = [regularised(statistics.in_basis(t, name, basis), ridge) for t in result.tasks]
        merged = result.modules[name]
        modules[name] = refine_module(merged, basis, targets, grams, heads, iterations, relative)
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
    """ALS on Σ_i w_i tr((T_i − B'G) C̃_i (T_i − B'G)ᵀ) from the closed-form (A', B').

    Tasks enter only through per-head sums C̄_k = Σ_{i∈k} w_i C̃_i and D_k = Σ_{i∈k} w_i T_i C̃_i.
    """
    shared = merged.A.double() @ basis  # G: r'×R
    head_b = merged.B.double().clone()  # K×d_out×r'
    rank, size = shared.shape
    c_bar = torch.zeros(head_b.shape[0], size, size, dtype=torch.float64)
    d_bar = torch.zeros(head_b.shape[0], head_b.shape[1], size, dtype=torch.float64)
    for t, g, k in zip(targets, grams, heads, strict=True):
        weighted = t @ g
        w = 1.0 / max(torch.sum(weighted * t).item(), 1e-300) if relative else 1.0
        c_bar[k] += w * g
        d_bar[k] += w * weighted
    eye_r = torch.eye(rank, dtype=torch.float64)
    for _ in range(iterations):
        for k in range(head_b.shape[0]):
            den = shared @ c_bar[k] @ shared.T
            den += 1e-10 * den.trace().clamp_min(1e-300) * eye_r
            head_b[k] = torch.linalg.solve(den, (d_bar[k] @ shared.T).T).T
        gram_b = head_b.transpose(1, 2) @ head_b  # S_k = B'_kᵀ B'_k
        rhs = torch.einsum("kdr,kds->rs", head_b, d_bar)
        shared = conjugate_gradient(partial(shared_operator, gram_b, c_bar), rhs, shared)
    return SharedLowRank((shared @ basis.T).float(), head_b.float())


def shared_operator(gram_b: torch.Tensor, c_bar: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """G ↦ Σ_k S_k G C̄_k, the normal operator of the shared-factor step."""
    return torch.einsum("krs,sa,kab->rb", gram_b, shared, c_bar)


def conjugate_gradient(
    operator: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, start: torch.Tensor,
    tolerance: float = 1e-10,
) -> torch.Tensor:  # fmt: skip
    """Solve operator(x) = rhs (symmetric positive semi-definite) from `start`; never increases
    ½⟨x, operator(x)⟩ − ⟨x, rhs⟩, exact after at most rhs.numel() steps."""
    x = start.clone()
    residual = rhs - operator(x)
    direction = residual.clone()
    norm = torch.sum(residual * residual)
    stop = tolerance**2 * torch.sum(rhs * rhs)
    for _ in range(rhs.numel()):
        if norm <= stop:
            break
        applied = operator(direction)
        curvature = torch.sum(direction * applied)
        if curvature <= 0:
            break
        step = norm / curvature
        x += step * direction
        residual -= step * applied
        new_norm = torch.sum(residual * residual)
        direction = residual + (new_norm / norm) * direction
        norm = new_norm
    return x


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
