"""Per-adapter truncation: every task keeps its own best rank-k approximation of ΔW_i.

The post-hoc compression of LoRA-Squeeze (arXiv 2602.10993): nothing is shared, so the storage
is k/r of the sources and each task's error is exactly its discarded singular values. It is the
no-sharing point a shared-basis method must beat at equal bytes, and on its own it compresses a
catalog. In factored form: with B_i = Q_b R_b and A_iᵀ = Q_a R_a, ΔW_i = Q_b (R_b R_aᵀ) Q_aᵀ, so
only the r×r core is decomposed; no d_out×d_in matrix is formed.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hydraopt.adapter import Adapter
from hydraopt.factors import LoraDelta, SharedLowRank
from hydraopt.methods.base import Layout, MergeMethod, knob


@dataclass(frozen=True)
class TruncationParams:
    """`rank` k each task keeps (default: the largest source rank, which loses nothing)."""

    rank: int | None = knob(help="k, the rank every task is truncated to (default: the largest source rank)")


def best_rank_k(delta: LoraDelta, rank: int) -> LoraDelta:
    """The best rank-`rank` factors (B' = U_k S_k, A' = V_kᵀ) of B A, zero-padded to `rank`."""
    q_b, r_b = torch.linalg.qr(delta.B)
    q_a, r_a = torch.linalg.qr(delta.A.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    keep = min(rank, s.shape[0])
    b = torch.cat([q_b @ u[:, :keep] * s[:keep], delta.B.new_zeros(delta.B.shape[0], rank - keep)], dim=1)
    a = torch.cat([vh[:keep] @ q_a.T, delta.A.new_zeros(rank - keep, delta.A.shape[1])], dim=0)
    return LoraDelta(a, b)


def one_head_per_task(adapters: Sequence[Adapter], params: TruncationParams) -> list[int]:
    return list(range(len(adapters)))


def merge_truncation(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: TruncationParams, module: str = ""
) -> SharedLowRank:
    """Head i holds task i's own A' (K×k×d_in) and B' (K×d_out×k)."""
    truncated = [best_rank_k(delta, params.rank) for delta in deltas]
    return SharedLowRank(torch.stack([t.A for t in truncated]), torch.stack([t.B for t in truncated]))


def truncation_storage(layout: Layout, rank: int, heads: int) -> int:
    """K = N heads, each its own A' and B': N·k·(Σd_in + Σd_out)."""
    return heads * rank * (layout.sum_in + layout.sum_out)


TRUNCATION = MergeMethod(
    "truncation",
    TruncationParams,
    merge_truncation,
    assign=one_head_per_task,
    storage=truncation_storage,
    description="per-adapter truncation: each task its own best rank-k factors (nothing shared)",
)
