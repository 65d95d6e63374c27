"""Core Space merging (Panariello et al., NeurIPS 2025; code: apanariello4/core-space-merging).

Reference bases from the stacked factors: U_ref, the left singular vectors of [B_1 … B_N]
(d_out×R), and V_refᵀ, the right singular vectors of [A_1; …; A_N] (R×d_in), R = Σ r_i. Every
update projects losslessly to an R×R core M_i = U_refᵀ B_i A_i V_ref = (U_refᵀ B_i)(A_i V_ref);
a task-arithmetic family member (`merge`: TA, TIES, DARE, DARE-TIES) merges the cores, and
ΔW = U_ref M V_refᵀ is kept as its best rank-r' factors (the authors keep the dense ΔW). As in the
authors' code, TIES/DARE prune each module's cores on their own, and the bases are SVDs (the
pruning depends on the basis; a QR would span the same space but prune differently). No
d_out×d_in matrix is formed.
"""

from collections.abc import Sequence

import torch

from hydraopt.factors import LoraDelta, SharedLowRank, truncated_svd
from hydraopt.methods.base import MergeMethod
from hydraopt.methods.task_arithmetic import SubspaceMergeParams, merge_family


def core_bases(deltas: Sequence[LoraDelta]) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_ref d_out×R, V_refᵀ R×d_in) of the stacked B's and A's."""
    u_ref = torch.linalg.svd(torch.cat([d.B for d in deltas], dim=1), full_matrices=False)[0]
    vh_ref = torch.linalg.svd(torch.cat([d.A for d in deltas], dim=0), full_matrices=False)[2]
    return u_ref, vh_ref


def merge_core_space(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: SubspaceMergeParams, module: str = ""
) -> SharedLowRank:
    u_ref, vh_ref = core_bases(deltas)
    cores = torch.stack([(u_ref.T @ d.B) @ (d.A @ vh_ref.T) for d in deltas])  # N × R × R
    merged = merge_family(cores, params.merge, params, module)
    return truncated_svd(u_ref @ merged, vh_ref, params.rank)


CORE_SPACE = MergeMethod(
    "core_space",
    SubspaceMergeParams,
    merge_core_space,
    description="Core Space: TA/TIES/DARE on the updates' cores in the bases of the stacked factors",
)
