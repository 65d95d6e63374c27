"""KnOTS (Stoica et al., ICLR 2025; code: gstoica27/KnOTS): align the updates by one SVD, merge there.

The authors take the SVD of the updates side by side, [ΔW_1 … ΔW_N] = U Σ [V_1ᵀ … V_Nᵀ], fold Σ
into the per-task blocks, X_i = Σ V_iᵀ = Uᵀ ΔW_i (k×d_in, singular values ≤ 1e-5 dropped), merge
the X_i with a task-arithmetic family member (`merge`) and rebuild ΔW = U X. In factored form the
SVD needs no d_out×N·d_in matrix: with [B_1 … B_N] = Q R, the blocks are Q (R_i A_i), so U = Q U_c
with U_c from the R×R Gram Σ_i R_i A_i A_iᵀ R_iᵀ, and X_i = U_cᵀ R_i A_i. The X_i themselves
(k×d_in per task) are formed: TIES and DARE act on their entries. Two departures from the authors'
code: pruning is per module (KnOTS' code ranks each task's entries across all layers at once; our
methods see one module at a time, as Core Space's code does), and the result is kept as its best
rank-r' factors rather than the dense U X.
"""

from collections.abc import Sequence

import torch

from hydraopt.factors import LoraDelta, SharedLowRank, truncated_svd
from hydraopt.methods.base import MergeMethod
from hydraopt.methods.task_arithmetic import SubspaceMergeParams, merge_family

SINGULAR_FLOOR = 1e-5  # the authors' cut-off for the shared basis


def aligned_blocks(deltas: Sequence[LoraDelta]) -> tuple[torch.Tensor, torch.Tensor]:
    """(U d_out×k, X N×k×d_in) with [ΔW_1 … ΔW_N] = U [X_1 … X_N] and orthonormal U."""
    q, r = torch.linalg.qr(torch.cat([d.B for d in deltas], dim=1))
    blocks, start = [], 0
    for delta in deltas:
        blocks.append(r[:, start : start + delta.rank] @ delta.A)
        start += delta.rank
    gram = sum(block.double() @ block.double().T for block in blocks)
    eigvals, eigvecs = torch.linalg.eigh(gram)
    kept = eigvals.clamp_min(0).sqrt() > SINGULAR_FLOOR
    u_c = eigvecs[:, kept].flip(1).to(q.dtype)  # largest first
    return q @ u_c, torch.stack([u_c.T @ block for block in blocks])


def merge_knots(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: SubspaceMergeParams, module: str = ""
) -> SharedLowRank:
    basis, blocks = aligned_blocks(deltas)
    merged = merge_family(blocks, params.merge, params, module)  # k × d_in
    return truncated_svd(basis, merged, params.rank)


KNOTS = MergeMethod(
    "knots",
    SubspaceMergeParams,
    merge_knots,
    description="KnOTS: one SVD of the updates side by side, TA/TIES/DARE on the per-task blocks",
)
