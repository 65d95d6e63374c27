"""HydraOpt's closed form: exact where it must be, optimal against references."""

import pytest
import torch

from hydraopt.factors import LoraDelta
from hydraopt.methods.hydraopt import HydraOptParams, cluster_tasks, merge_module


def random_deltas(ranks, d_out=12, d_in=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        LoraDelta(torch.randn(r, d_in, generator=gen), torch.randn(d_out, r, generator=gen)) for r in ranks
    ]


def loss(deltas, assignment, shared):
    return sum(
        torch.sum((d.dense() - shared.B[k] @ shared.A) ** 2) for d, k in zip(deltas, assignment)
    ).item()


def dense_reference(deltas, assignment, rank):
    """Brute force: SVD of the dense stacked [√n_k M_k]; returns the optimal loss."""
    heads = max(assignment) + 1
    means = []
    for k in range(heads):
        members = [d.dense() for d, h in zip(deltas, assignment) if h == k]
        means.append(len(members) ** 0.5 * torch.stack(members).mean(0))
    _, _, vh = torch.linalg.svd(torch.cat(means).double(), full_matrices=False)
    a = vh[:rank].float()
    heads_b = []
    for k in range(heads):
        members = [d.dense() for d, h in zip(deltas, assignment) if h == k]
        heads_b.append(torch.stack(members).mean(0) @ a.T)
    return sum(torch.sum((d.dense() - heads_b[k] @ a) ** 2) for d, k in zip(deltas, assignment)).item()


def test_single_adapter_is_reproduced_when_rank_is_at_least_its_rank():
    (delta,) = random_deltas([4])
    for rank in (4, 6):
        shared = merge_module([delta], [0], HydraOptParams(rank=rank))
        assert shared.A.shape == (rank, 10) and shared.B.shape == (1, 12, rank)
        error = torch.linalg.norm(shared.B[0] @ shared.A - delta.dense()) / torch.linalg.norm(delta.dense())
        assert error < 1e-5


def test_one_head_per_task_with_full_rank_reproduces_every_task():
    deltas = random_deltas([2, 3, 4], d_out=16, d_in=20)
    shared = merge_module(deltas, [0, 1, 2], HydraOptParams(rank=9))
    for k, delta in enumerate(deltas):
        error = torch.linalg.norm(shared.B[k] @ shared.A - delta.dense()) / torch.linalg.norm(delta.dense())
        assert error < 1e-5


@pytest.mark.parametrize(
    ("ranks", "assignment", "rank"),
    [([3, 3, 3, 3], [0, 0, 1, 1], 3), ([2, 4, 3], [0, 1, 0], 2), ([4, 4, 4, 4, 4], [0, 1, 2, 0, 1], 5)],
)
def test_closed_form_matches_dense_svd_reference(ranks, assignment, rank):
    deltas = random_deltas(ranks, seed=sum(ranks))
    shared = merge_module(deltas, assignment, HydraOptParams(rank=rank))
    assert loss(deltas, assignment, shared) == pytest.approx(
        dense_reference(deltas, assignment, rank), rel=1e-5
    )


def test_gradient_descent_never_beats_the_closed_form():
    deltas = random_deltas([3, 3, 3, 3], seed=7)
    assignment = [0, 1, 0, 1]
    shared = merge_module(deltas, assignment, HydraOptParams(rank=3))
    closed = loss(deltas, assignment, shared)
    targets = torch.stack([d.dense() for d in deltas])
    for start in ("closed_form", "random"):
        gen = torch.Generator().manual_seed(1)
        a = (
            shared.A.clone() if start == "closed_form" else torch.randn(3, 10, generator=gen)
        ).requires_grad_()
        b = (
            shared.B.clone() if start == "closed_form" else torch.randn(2, 12, 3, generator=gen)
        ).requires_grad_()
        optimizer = torch.optim.Adam([a, b], lr=0.01)
        best = float("inf")
        for _ in range(1500):
            optimizer.zero_grad()
            value = torch.sum((targets - b[assignment] @ a) ** 2)
            value.backward()
            optimizer.step()
            best = min(best, value.item())
        assert best >= closed * (1 - 1e-4), start


def test_merge_never_forms_dense_updates_and_handles_rank_beyond_span():
    deltas = random_deltas([1, 1], d_out=12, d_in=10)
    shared = merge_module(deltas, [0, 0], HydraOptParams(rank=5))
    assert shared.A.shape == (5, 10)
    assert torch.all(shared.A[2:] == 0) and torch.all(shared.B[:, :, 2:] == 0)


def test_clustering_finds_planted_task_families():
    gen = torch.Generator().manual_seed(3)
    families = [torch.randn(8, 8, generator=gen) for _ in range(3)]
    tasks = [families[f] + 0.05 * torch.randn(8, 8, generator=gen) for f in (0, 1, 2, 0, 1, 2, 0)]
    flat = torch.stack([t.flatten() for t in tasks]).double()
    labels = cluster_tasks(flat @ flat.T, heads=3, seed=0)
    assert labels[:3] == [0, 1, 2]
    assert labels == [0, 1, 2, 0, 1, 2, 0]
    assert cluster_tasks(flat @ flat.T, heads=3, seed=0) == labels


def relative_errors(deltas, assignment, shared):
    return [
        (torch.sum((d.dense() - shared.B[k] @ shared.A) ** 2) / torch.sum(d.dense() ** 2)).item()
        for d, k in zip(deltas, assignment)
    ]


def test_relative_weighting_stops_a_large_update_from_crowding_out_a_small_one():
    small, large = random_deltas([3, 3], seed=5)
    deltas = [small, LoraDelta(large.A, 20 * large.B)]
    assignment = [0, 1]
    absolute = merge_module(deltas, assignment, HydraOptParams(rank=3))
    relative = merge_module(deltas, assignment, HydraOptParams(rank=3, weighting="relative"))
    abs_small, abs_large = relative_errors(deltas, assignment, absolute)
    rel_small, rel_large = relative_errors(deltas, assignment, relative)
    assert abs_small > 0.3 and abs_large < 0.01  # the absolute loss spends A' on the large update
    assert rel_small < abs_small and max(rel_small, rel_large) < max(abs_small, abs_large)
    # w_i = 1/‖ΔW_i‖² is the absolute loss on the normalised updates
    scaled = [LoraDelta(d.A, d.B / torch.sum(d.dense() ** 2).sqrt()) for d in deltas]
    on_scaled = merge_module(scaled, assignment, HydraOptParams(rank=3))
    torch.testing.assert_close(relative.A.abs(), on_scaled.A.abs(), atol=1e-4, rtol=0)


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="weighting"):
        HydraOptParams(weighting="squared")
