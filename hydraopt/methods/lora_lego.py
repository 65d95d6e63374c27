"""LoRA-LEGO (Zhao et al., ICLR 2025): rank-wise clustering of every adapter's rank-1 units.

Each rank j of task i is a minimal semantic unit u = [b_j; a_j] (column j of B_i, scale folded in,
and row j of A_i), with ΔW_i = Σ_j b_j a_jᵀ. All N·r units of a module are clustered by k-means on
u into k = r' clusters, and each centroid becomes one rank of the merged LoRA. The paper's dual
reweighting is applied as follows; there is no public code, so both rules are our reading of it:
- parameter reweighting (against the norm decay of averaging): each centroid's b and a parts are
  rescaled to the mean norm of its members' b and a parts;
- output reweighting (against the variance growth of summing k units): centroid c is weighted by
  n_c / N (its members over the task count), so that with k = Σ r_i every unit is its own centroid
  and the merge is exactly task arithmetic's mean update.
Units are clustered as they are: (b, a) and (−b, −a) are the same update but distant points, as in
the paper. k-means is seeded (k-means++, best of several restarts), so a merge is reproducible.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hydraopt.factors import LoraDelta, SharedLowRank, pad_rank
from hydraopt.methods.base import MergeMethod, knob

RESTARTS, ITERATIONS = 4, 100


@dataclass(frozen=True)
class LoraLegoParams:
    """`rank` k: clusters, the merged LoRA's rank (default: the largest source rank); k-means `seed`."""

    rank: int | None = knob(
        help="k, clusters of rank-1 units and the merged rank (default: the largest source rank)"
    )
    seed: int = knob(0, help="seed of the k-means")


def kmeans(points: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    """Labels of Lloyd's k-means from k-means++ centres, the lowest-cost of RESTARTS runs."""
    best_cost, best_labels = float("inf"), None
    for _ in range(RESTARTS):
        centres = points[torch.randint(len(points), (1,), generator=generator)]
        while len(centres) < clusters:
            nearest = torch.cdist(points, centres).min(dim=1).values ** 2
            pick = (
                torch.multinomial(nearest, 1, generator=generator)
                if nearest.sum() > 0
                else nearest.argmin()[None]
            )
            centres = torch.cat([centres, points[pick]])
        for _ in range(ITERATIONS):
            labels = torch.cdist(points, centres).argmin(dim=1)
            moved = torch.stack([points[labels == c].mean(dim=0) if (labels == c).any() else centres[c]
                                 for c in range(clusters)])  # fmt: skip
            if torch.equal(moved, centres):
                break
            centres = moved
        cost = ((points - centres[labels]) ** 2).sum().item()
        if cost < best_cost:
            best_cost, best_labels = cost, labels
    return best_labels


def merge_lora_lego(
    deltas: Sequence[LoraDelta], assignment: Sequence[int], params: LoraLegoParams, module: str = ""
) -> SharedLowRank:
    b_units = torch.cat([d.B.T for d in deltas])  # (Σ r_i) × d_out
    a_units = torch.cat([d.A for d in deltas])  # (Σ r_i) × d_in
    clusters = min(params.rank, len(a_units))
    generator = torch.Generator().manual_seed(params.seed)
    labels = kmeans(torch.cat([b_units, a_units], dim=1).cpu(), clusters, generator).to(a_units.device)
    rows_b, rows_a = [], []
    for cluster in labels.unique():  # a cluster left empty (duplicate units) adds a zero rank
        members = labels == cluster
        b, a = b_units[members], a_units[members]
        centre_b = b.mean(dim=0) * rescale(b)
        centre_a = a.mean(dim=0) * rescale(a)
        rows_b.append(centre_b * members.sum() / len(deltas))
        rows_a.append(centre_a)
    return pad_rank(SharedLowRank(torch.stack(rows_a), torch.stack(rows_b, dim=1).unsqueeze(0)), params.rank)


def rescale(members: torch.Tensor) -> torch.Tensor:
    """The factor bringing the members' mean vector to their mean norm (1 for a zero mean)."""
    mean_norm = torch.linalg.norm(members, dim=1).mean()
    centre_norm = torch.linalg.norm(members.mean(dim=0))
    return torch.where(
        centre_norm > 0, mean_norm / centre_norm.clamp_min(1e-30), torch.ones_like(centre_norm)
    )


LORA_LEGO = MergeMethod(
    "lora_lego",
    LoraLegoParams,
    merge_lora_lego,
    description="LoRA-LEGO: k-means of all rank-1 units into a rank-k LoRA, with norm reweighting",
)
