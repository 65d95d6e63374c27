"""Per-adapter truncation: every task keeps its own best rank-k approximation of ΔW_i.

The post-hoc compression of LoRA-Squeeze (arXiv 2602.10993): nothing is shared, so the storage
is k/r of the sources and each task's error is exactly its discarded singular values. It is the
no-sharing point a shared-basis method must beat at equal bytes, and on its own it compresses a
catalog. In factored form (`hydraopt.factors.truncated_svd`): with A_iᵀ = Q R, ΔW_i = (B_i Rᵀ) Qᵀ,
so only the d_out×r matrix B_i Rᵀ is decomposed; no d_out×d_in matrix is formed.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hydraopt.adapter import Adapter
from hydraopt.factors import LoraDelta, SharedLowRank, truncated_svd
from hydraopt.methods.base import Layout, MergeMethod, knob


@dataclass(frozen=True)
class TruncationParams:
    """`rank` k each task keeps (default: the largest source rank, which loses nothing)."""

    rank: int | None = knob(help="k, the rank every task is truncated to (default: the largest source rank)")


def one_head_per_task(adapters: Sequence[Adapter], params: TruncationParams) -> list[int]:
    return list(range(len(adapters)))


def merge_truncation(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: TruncationParams, module: str = ""
) -> SharedLowRank:
    """Head i holds task i's own A' (K×k×d_in) and B' (K×d_out×k)."""
    truncated = [truncated_svd(delta.B, delta.A, params.rank) for delta in deltas]
    return SharedLowRank(torch.stack([t.A for t in truncated]), torch.cat([t.B for t in truncated]))


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
