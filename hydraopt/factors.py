"""Low-rank factors and the factored linear algebra every method and metric shares.

A source module update is `ΔW = B @ A` with the LoRA scale already folded into `B`
(`A`: r×d_in, `B`: d_out×r). A merge result per module is one shared `A'` (r'×d_in) and
`K` heads `B'_k` (d_out×r'). Nothing here forms a d_out×d_in matrix.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoraDelta:
    """One module of one adapter: ΔW = B @ A, scale folded into B, float32."""

    A: torch.Tensor
    B: torch.Tensor

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the update."""
        return self.B.shape[0], self.A.shape[1]

    def dense(self) -> torch.Tensor:
        return self.B @ self.A

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "LoraDelta":
        return LoraDelta(self.A.to(device, dtype), self.B.to(device, dtype))


@dataclass(frozen=True)
class SharedLowRank:
    """One module of a merge result: A' (r'×d_in, shared by the heads) and heads B' (K×d_out×r').

    A method that shares nothing (per-adapter truncation) gives every head its own A'
    (K×r'×d_in); `per_head_a` says which form this is.
    """

    A: torch.Tensor
    B: torch.Tensor

    @property
    def per_head_a(self) -> bool:
        return self.A.dim() == 3

    @property
    def rank(self) -> int:
        return self.A.shape[-2]

    @property
    def heads(self) -> int:
        return self.B.shape[0]

    @property
    def num_params(self) -> int:
        return self.A.numel() + self.B.numel()

    def head(self, k: int) -> LoraDelta:
        return LoraDelta(self.A[k] if self.per_head_a else self.A, self.B[k])

    def task_delta(self, position: int, head: int) -> LoraDelta:
        """The update of the task at `position` in the merge, which uses `head`."""
        return self.head(head)

    def cpu(self) -> "SharedLowRank":
        return SharedLowRank(self.A.float().cpu(), self.B.float().cpu())


@dataclass(frozen=True)
class CoreLowRank:
    """One module of a joint-diagonalisation merge: per group g a shared U_g (d_out×r') and
    V_gᵀ (r'×d_in), per task a core Σ_i (r'×r', or its diagonal: r'); ΔW'_i = U_g Σ_i V_gᵀ.

    U is G×d_out×r', Vt is G×r'×d_in, cores N×r'×r' (or N×r') in the merge's task order; a
    task's head is its group. As a LoRA: A = Σ_i V_gᵀ, B = U_g.
    """

    U: torch.Tensor
    Vt: torch.Tensor
    cores: torch.Tensor

    @property
    def diagonal(self) -> bool:
        return self.cores.dim() == 2

    @property
    def rank(self) -> int:
        return self.Vt.shape[1]

    @property
    def heads(self) -> int:
        return self.U.shape[0]

    @property
    def num_params(self) -> int:
        return self.U.numel() + self.Vt.numel() + self.cores.numel()

    def task_delta(self, position: int, head: int) -> LoraDelta:
        core = torch.diag(self.cores[position]) if self.diagonal else self.cores[position]
        return LoraDelta(core @ self.Vt[head], self.U[head])

    def cpu(self) -> "CoreLowRank":
        return CoreLowRank(self.U.float().cpu(), self.Vt.float().cpu(), self.cores.float().cpu())


ModuleFactors = SharedLowRank | CoreLowRank


def inner(x: LoraDelta, y: LoraDelta) -> torch.Tensor:
    """⟨B_x A_x, B_y A_y⟩_F = tr((B_xᵀ B_y)(A_y A_xᵀ)), without the dense product."""
    return torch.sum((x.B.T @ y.B) * (x.A @ y.A.T))


def squared_norm(x: LoraDelta) -> torch.Tensor:
    """‖B A‖²_F in factored form."""
    return inner(x, x)


def residual_squared_norm(x: LoraDelta, y: LoraDelta) -> torch.Tensor:
    """‖B_x A_x − B_y A_y‖²_F, computed without cancellation.

    The difference is [B_x, −B_y] @ [A_x; A_y]; with [A_x; A_y]ᵀ = Q R it equals
    ‖[B_x, −B_y] Rᵀ‖²_F, a small d_out×(r_x+r_y) matrix.
    """
    stacked_a = torch.cat([x.A, y.A], dim=0)
    stacked_b = torch.cat([x.B, -y.B], dim=1)
    _, r = torch.linalg.qr(stacked_a.T)
    return torch.sum((stacked_b @ r.T) ** 2)


def truncated_svd(b: torch.Tensor, a: torch.Tensor, rank: int) -> SharedLowRank:
    """Best rank-`rank` factorisation of `b @ a` (one head), zero-padded to `rank`.

    Works in the row space of `a`: b @ a = (b Rᵀ) Qᵀ with aᵀ = Q R.
    """
    q, r = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(b @ r.T, full_matrices=False)
    keep = min(rank, s.shape[0])
    shared_a = vh[:keep] @ q.T
    head_b = u[:, :keep] * s[:keep]
    return pad_rank(SharedLowRank(shared_a, head_b.unsqueeze(0)), rank)


def pad_rank(result: SharedLowRank, rank: int) -> SharedLowRank:
    """Zero-pad A' rows and B' columns so every module has exactly `rank`."""
    missing = rank - result.rank
    if missing <= 0:
        return result
    a = torch.cat([result.A, result.A.new_zeros(*result.A.shape[:-2], missing, result.A.shape[-1])], dim=-2)
    b = torch.cat([result.B, result.B.new_zeros(*result.B.shape[:2], missing)], dim=2)
    return SharedLowRank(a, b)
