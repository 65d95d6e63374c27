"""HydraOpt: one shared low-rank A' and K task-specific heads B', closed form per module.

Per module minimise Σ_i w_i ‖ΔW_i − B'_{c(i)} A'‖²_F. With M_k the w-weighted mean ΔW of head k
and W_k its total weight, A' = top-r' right singular vectors of the stacked [√W_k M_k] and
B'_k = M_k A'ᵀ. `weighting="absolute"` (default) is w_i = 1, the loss as DESIGN.md defines it;
`"relative"` is w_i = 1/‖ΔW_i‖², the sum of relative errors, so small updates are not sacrificed
to large ones. Everything is computed in the span Q of the stacked A_i rows: M_k = C_k Qᵀ with
C_k = Σ_{i∈k} w_i B_i (A_i Q) / W_k, so only R×R matrices (R = Σ r_i) are decomposed.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hydraopt.adapter import Adapter
from hydraopt.factors import LoraDelta, SharedLowRank, pad_rank, squared_norm
from hydraopt.methods.base import RANK_HELP, MergeMethod, knob

WEIGHTINGS = ("absolute", "relative")


@dataclass(frozen=True)
class HydraOptParams:
    """Knobs: `heads` K (default: one per task), `rank` r' of the shared A' (default: max
    source rank), an explicit `assignment` task -> head (default: clustering when K < N),
    and the clustering `seed`."""

    rank: int | None = knob(help=RANK_HELP)
    heads: int | None = knob(help="K, number of B' heads (default: one per task)")
    assignment: dict[str, int] | None = knob(
        help="task -> head index (default: tasks clustered when K < N)", flag="assign"
    )
    seed: int = knob(0, help="seed of the task clustering")
    weighting: str = knob(
        "absolute", choices=WEIGHTINGS,
        help="loss: Σ‖ΔW_i−ΔW'_i‖² (absolute) or the sum of relative errors (relative)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")


def task_weights(deltas: Sequence[LoraDelta], weighting: str) -> torch.Tensor:
    """w_i: 1 each (absolute), or 1/‖ΔW_i‖² (relative; a zero update gets weight 0)."""
    if weighting == "absolute":
        return torch.ones(len(deltas), dtype=torch.float64)
    norms = torch.stack([squared_norm(d.to(d.A.device, torch.float64)) for d in deltas]).cpu()
    return torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))


def head_row_weights(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K×R matrix whose row k holds w_i/W_k on the factor rows of head k's tasks, W_k per head)."""
    heads = max(assignment) + 1
    totals = torch.zeros(heads, dtype=torch.float64).index_add_(0, torch.tensor(list(assignment)), weights)
    ranks = [d.rank for d in deltas]
    rows = torch.zeros(heads, sum(ranks), dtype=torch.float64)
    start = 0
    for rank, head, weight in zip(ranks, assignment, weights.tolist()):
        if totals[head] > 0:
            rows[head, start : start + rank] = weight / totals[head].item()
        start += rank
    return rows.to(deltas[0].A.device), totals.to(deltas[0].A.device)


def merge_module(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: HydraOptParams, module: str = ""
) -> SharedLowRank:
    """Closed-form A' and B'_k for one module, never forming a d_out×d_in matrix per task."""
    stacked_a = torch.cat([d.A for d in deltas], dim=0)  # R × d_in
    stacked_b = torch.cat([d.B for d in deltas], dim=1)  # d_out × R
    basis, _ = torch.linalg.qr(stacked_a.T)  # d_in × R'
    coords = stacked_a @ basis  # R × R': A_i = coords_i Qᵀ
    weights, totals = head_row_weights(deltas, assignment, task_weights(deltas, params.weighting))  # K × R, K
    b_gram = (stacked_b.T @ stacked_b).double()
    # Σ_k W_k C_kᵀ C_k with C_k = B_all diag(row k) P is Pᵀ (S ⊙ BᵀB) P, S = Σ_k W_k w_k w_kᵀ (R×R):
    # float64, and no K×R×R' tensor.
    row_pairs = weights.T @ (totals[:, None] * weights)
    gram = coords.double().T @ (row_pairs * b_gram) @ coords.double()
    _, eigvecs = torch.linalg.eigh(gram)
    keep = min(params.rank, eigvecs.shape[1])
    top = eigvecs[:, -keep:].flip(1).to(stacked_a.dtype)  # R' × r', largest first
    shared_a = (basis @ top).T
    in_basis = coords @ top  # R × r'
    heads_b = torch.stack([stacked_b @ (row[:, None].to(stacked_a.dtype) * in_basis) for row in weights])
    return pad_rank(SharedLowRank(shared_a, heads_b), params.rank)


def task_gram(adapters: Sequence[Adapter]) -> torch.Tensor:
    """N×N float64 Gram of the tasks' full updates: Σ_m ⟨ΔW_i,m, ΔW_j,m⟩, in factored form."""
    n = len(adapters)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for name in adapters[0].modules:
        deltas = [a.modules[name] for a in adapters]
        ranks = torch.tensor([d.rank for d in deltas])
        members = torch.repeat_interleave(torch.arange(n), ranks)
        stacked_a = torch.cat([d.A for d in deltas], dim=0).double()
        stacked_b = torch.cat([d.B for d in deltas], dim=1).double()
        products = (stacked_b.T @ stacked_b) * (stacked_a @ stacked_a.T)  # R × R
        indicator = torch.nn.functional.one_hot(members, n).double()  # R × N
        gram += indicator.T @ products @ indicator
    return gram


def cluster_tasks(gram: torch.Tensor, heads: int, seed: int = 0, restarts: int = 8) -> list[int]:
    """Kernel k-means on the task Gram: minimises Σ_i ‖ΔW_i − M_{c(i)}‖², the part of the
    HydraOpt loss the assignment controls. Heads are numbered by first appearance."""
    diag = gram.diagonal()
    pair_dist = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min(0)
    generator = torch.Generator().manual_seed(seed)
    best_cost, best_labels = float("inf"), None
    for _ in range(restarts):
        labels = kmeans_plus_plus(pair_dist, heads, generator)
        for _ in range(100):
            dist = distance_to_means(gram, labels, heads)
            new_labels = dist.argmin(dim=1)
            fill_empty_heads(new_labels, dist, heads)
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        cost = distance_to_means(gram, labels, heads).gather(1, labels[:, None]).sum().item()
        if cost < best_cost - 1e-12 * max(1.0, abs(cost)):
            best_cost, best_labels = cost, labels
    order = {int(h): i for i, h in enumerate(dict.fromkeys(best_labels.tolist()))}
    return [order[int(h)] for h in best_labels]


def kmeans_plus_plus(pair_dist: torch.Tensor, heads: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded k-means++ centres, then each task to its nearest centre."""
    n = pair_dist.shape[0]
    centres = [int(torch.randint(n, (1,), generator=generator))]
    while len(centres) < heads:
        nearest = pair_dist[:, centres].min(dim=1).values
        if nearest.sum() <= 0:
            remaining = [i for i in range(n) if i not in centres]
            centres.append(remaining[0])
            continue
        centres.append(int(torch.multinomial(nearest, 1, generator=generator)))
    labels = pair_dist[:, centres].argmin(dim=1)
    labels[centres] = torch.arange(heads)
    return labels


def distance_to_means(gram: torch.Tensor, labels: torch.Tensor, heads: int) -> torch.Tensor:
    """N×K squared distances ‖ΔW_i − M_k‖² from the Gram alone (inf for an empty head)."""
    member = torch.nn.functional.one_hot(labels, heads).double()  # N × K
    sizes = member.sum(dim=0)
    safe = sizes.clamp_min(1)
    cross = gram @ member / safe  # ⟨ΔW_i, M_k⟩
    within = (member.T @ gram @ member).diagonal() / safe**2  # ‖M_k‖²
    dist = gram.diagonal()[:, None] - 2 * cross + within[None, :]
    return torch.where(sizes[None, :] > 0, dist, torch.full_like(dist, float("inf")))


def fill_empty_heads(labels: torch.Tensor, dist: torch.Tensor, heads: int) -> None:
    """Give each empty head the task currently farthest from its own mean."""
    for head in range(heads):
        if (labels == head).any():
            continue
        own = dist.gather(1, labels[:, None]).squeeze(1)
        counts = torch.bincount(labels, minlength=heads)
        movable = counts[labels] > 1
        own = torch.where(movable, own, torch.full_like(own, -1.0))
        labels[int(own.argmax())] = head


def assign(adapters: Sequence[Adapter], params: HydraOptParams) -> list[int]:
    """Explicit map if given, else one head per task (K=N), one head (K=1), or clustering."""
    tasks = [a.task_name for a in adapters]
    n = len(tasks)
    if params.assignment is not None:
        missing = sorted(set(tasks) - set(params.assignment))
        extra = sorted(set(params.assignment) - set(tasks))
        if missing or extra:
            raise ValueError(
                f"assignment must name exactly the tasks merged; missing {missing}, unknown {extra}"
            )
        labels = [int(params.assignment[t]) for t in tasks]
        if params.heads is not None and max(labels) + 1 != params.heads:
            raise ValueError(f"assignment uses {max(labels) + 1} heads but heads={params.heads}")
        return labels
    heads = n if params.heads is None else params.heads
    if not 1 <= heads <= n:
        raise ValueError(f"heads must be between 1 and the number of tasks ({n}), got {heads}")
    if heads == n:
        return list(range(n))
    if heads == 1:
        return [0] * n
    return cluster_tasks(task_gram(adapters), heads, params.seed)


HYDRAOPT = MergeMethod(
    name="hydraopt",
    params_type=HydraOptParams,
    merge_module=merge_module,
    assign=assign,
    description="shared A' + K heads B', closed form (HydraOpt, data-free)",
    refinable=True,
)
