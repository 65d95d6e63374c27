"""JD-Full and JD-Diag: a shared U and V per module with a small core per task (Compress then
Serve, Brüel-Gabrielsson et al., ICML 2025).

ΔW'_i = U Σ_i Vᵀ with U: d_out×r', V: d_in×r' shared by a group of tasks and Σ_i r'×r' (JD-Full)
or diagonal (JD-Diag). Storage per group r'(d_out + d_in) plus r'² (or r') per task, far below a
B' per task. The fits follow the authors' algorithms: JD-Full alternates U and V as the top
singular vectors of the stacked ΔW_i V (resp. ΔW_iᵀ U), maximising Σ_i ‖Uᵀ ΔW_i V‖² with U, V
orthonormal and Σ_i = Uᵀ ΔW_i V; JD-Diag alternates least squares for the diagonals, U and V
(not orthonormal), then rescales. Both start from the top singular vectors of the stacked
updates (the authors start at random), so a merge is deterministic.

Everything runs in the spans of the stacked factors: with [B_1 … B_N] = Q_B R_B and
[A_1; …; A_N]ᵀ = Q_A R_A, ΔW_i = Q_B C_i Q_Aᵀ where C_i is R×R (R = Σ r_i), and the optimal U, V
lie in those spans, so only R×R matrices are decomposed. `heads` K > 1 clusters the tasks into
K groups (HydraOpt's clustering on the tasks' Gram) and fits one (U, V) per group, the paper's
clustered variant.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hydraopt.adapter import Adapter
from hydraopt.factors import CoreLowRank, LoraDelta
from hydraopt.methods.base import RANK_HELP, Layout, MergeMethod, knob
from hydraopt.methods.hydraopt import cluster_tasks, task_gram

FULL_ITERATIONS, DIAG_ITERATIONS = 10, 100  # the authors' defaults


@dataclass(frozen=True)
class JointDiagonalizationParams:
    """`rank` r' of U and V, `heads` K groups of tasks with their own (U, V) (default 1),
    `iterations` of the alternating fit, clustering `seed`."""

    rank: int | None = knob(help=RANK_HELP)
    heads: int | None = knob(help="K, number of task groups with their own U, V (default 1)")
    iterations: int | None = knob(help="alternating updates (default: 10 for jd_full, 100 for jd_diag)")
    seed: int = knob(0, help="seed of the task clustering")


def spans(deltas: Sequence[LoraDelta]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q_B d_out×R, Q_A d_in×R, cores N×R×R) with ΔW_i = Q_B C_i Q_Aᵀ, float64."""
    q_b, r_b = torch.linalg.qr(torch.cat([d.B for d in deltas], dim=1).double())
    q_a, r_a = torch.linalg.qr(torch.cat([d.A for d in deltas], dim=0).double().T)
    cores, start = [], 0
    for delta in deltas:
        block = slice(start, start + delta.rank)
        cores.append(r_b[:, block] @ r_a[:, block].T)
        start += delta.rank
    return q_b, q_a, torch.stack(cores)


def top_left(blocks: torch.Tensor, rank: int) -> torch.Tensor:
    """The top `rank` left singular vectors of [M_1 … M_N] (`blocks` N×R×c), from the R×R Gram
    Σ_i M_i M_iᵀ (float64): an eigh of R×R instead of an SVD of R×N·c."""
    gram = (blocks @ blocks.transpose(1, 2)).sum(dim=0)
    return torch.linalg.eigh(gram)[1][:, -rank:].flip(1)


def initial_bases(cores: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """u, v: the top left singular vectors of [C_1 … C_N] and the top right ones of [C_1; …; C_N]."""
    return top_left(cores, rank), top_left(cores.transpose(1, 2), rank)


def fit_full(
    cores: torch.Tensor, rank: int, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal u, v (R×r') and cores uᵀ C_i v, by the authors' alternating SVDs."""
    u, v = initial_bases(cores, rank)
    for _ in range(iterations):
        u = top_left(cores @ v, rank)
        v = top_left(cores.transpose(1, 2) @ u, rank)
    return u, v, u.T @ cores @ v


def fit_diag(
    cores: torch.Tensor, rank: int, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, v (R×r') and diagonals s_i (N×r') minimising Σ_i ‖C_i − u diag(s_i) vᵀ‖², by the
    authors' alternating least squares (with their rescaling), from `initial_bases`."""
    u, v = initial_bases(cores, rank)
    for _ in range(iterations):
        s = diagonals(cores, u, v)
        pairs = s.T @ s  # Σ_i s_i s_iᵀ
        u = ((cores @ v) * s[:, None]).sum(dim=0) @ torch.linalg.pinv((v.T @ v) * pairs, hermitian=True)
        v = ((cores.transpose(1, 2) @ u) * s[:, None]).sum(dim=0) @ torch.linalg.pinv(
            (u.T @ u) * pairs, hermitian=True
        )
        scale = torch.linalg.norm(s).clamp_min(1e-300)
        u = u * scale
        balance = (torch.linalg.norm(v) / torch.linalg.norm(u).clamp_min(1e-300)).sqrt()
        u, v = u * balance, v / balance.clamp_min(1e-300)
    return u, v, diagonals(cores, u, v)


def diagonals(cores: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The least-squares diagonals for fixed u, v: ((uᵀu) ∘ (vᵀv)) s_i = diag(uᵀ C_i v)."""
    targets = ((u.T @ cores) * v.T).sum(dim=-1)  # N × r': diag(uᵀ C_i v)
    return targets @ torch.linalg.pinv((u.T @ u) * (v.T @ v), hermitian=True)


def jd_merge(diagonal: bool):
    """The merge_module of JD-Full (`diagonal` False) or JD-Diag."""

    def merge_module(
        deltas: Sequence[LoraDelta],
        assignment: Sequence[int],
        params: JointDiagonalizationParams,
        module: str = "",
    ) -> CoreLowRank:
        fit = fit_diag if diagonal else fit_full
        default = DIAG_ITERATIONS if diagonal else FULL_ITERATIONS
        iterations = default if params.iterations is None else params.iterations
        d_out, d_in = deltas[0].shape
        groups = max(assignment) + 1
        u_all = deltas[0].A.new_zeros(groups, d_out, params.rank, dtype=torch.float64)
        vt_all = deltas[0].A.new_zeros(groups, params.rank, d_in, dtype=torch.float64)
        core_shape = (params.rank,) if diagonal else (params.rank, params.rank)
        cores_all = deltas[0].A.new_zeros(len(deltas), *core_shape, dtype=torch.float64)
        for group in range(groups):
            members = [i for i, head in enumerate(assignment) if head == group]
            q_b, q_a, cores = spans([deltas[i] for i in members])
            keep = min(params.rank, cores.shape[1])
            u, v, fitted = fit(cores, keep, iterations)
            u_all[group, :, :keep] = q_b @ u
            vt_all[group, :keep] = (q_a @ v).T
            for i, core in zip(members, fitted):
                if diagonal:
                    cores_all[i, :keep] = core
                else:
                    cores_all[i, :keep, :keep] = core
        dtype = deltas[0].A.dtype
        return CoreLowRank(u_all.to(dtype), vt_all.to(dtype), cores_all.to(dtype))

    return merge_module


def assign_groups(adapters: Sequence[Adapter], params: JointDiagonalizationParams) -> list[int]:
    """One group (K=1) by default; K > 1 clusters the tasks on their Gram."""
    heads = 1 if params.heads is None else params.heads
    if not 1 <= heads <= len(adapters):
        raise ValueError(f"heads must be between 1 and the number of tasks ({len(adapters)}), got {heads}")
    if heads == 1:
        return [0] * len(adapters)
    return cluster_tasks(task_gram(adapters), heads, params.seed)


def jd_storage(diagonal: bool):
    """K groups' U, V (K·r'·(Σd_in + Σd_out)) and per task and module a core of r'² (or r')."""

    def storage(layout: Layout, rank: int, heads: int) -> int:
        core = rank if diagonal else rank * rank
        return heads * rank * (layout.sum_in + layout.sum_out) + layout.tasks * layout.modules * core

    return storage


JD_FULL = MergeMethod(
    "jd_full",
    JointDiagonalizationParams,
    jd_merge(diagonal=False),
    assign=assign_groups,
    storage=jd_storage(diagonal=False),
    description="JD-Full: shared U, V per module and a full r'×r' core per task (Compress then Serve)",
)
JD_DIAG = MergeMethod(
    "jd_diag",
    JointDiagonalizationParams,
    jd_merge(diagonal=True),
    assign=assign_groups,
    storage=jd_storage(diagonal=True),
    description="JD-Diag: shared U, V per module and a diagonal core per task (Compress then Serve)",
)
