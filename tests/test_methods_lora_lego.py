"""LoRA-LEGO: k = Σ r_i is task arithmetic's mean, copies of one adapter come back whole, centroids
keep their members' norms, and k-means is seeded."""

import torch

from hydraopt.factors import LoraDelta
from hydraopt.methods.lora_lego import LoraLegoParams, kmeans, merge_lora_lego
from tests.deltas import random_deltas

D_OUT, D_IN = 18, 14


def lora_deltas(ranks: list[int], seed: int = 2) -> list[LoraDelta]:
    return random_deltas(ranks, D_OUT, D_IN, seed)


def test_one_cluster_per_unit_is_the_mean_update():
    deltas = lora_deltas([2, 3, 1])
    merged = merge_lora_lego(deltas, [0, 0, 0], LoraLegoParams(rank=6))
    expected = sum(d.dense() for d in deltas) / len(deltas)
    torch.testing.assert_close(merged.head(0).dense(), expected, rtol=1e-5, atol=1e-5)


def test_copies_of_one_adapter_merge_back_into_it():
    (delta,) = lora_deltas([3])
    merged = merge_lora_lego([delta] * 4, [0] * 4, LoraLegoParams(rank=3))
    torch.testing.assert_close(merged.head(0).dense(), delta.dense(), rtol=1e-5, atol=1e-5)
    padded = merge_lora_lego(
        [delta] * 4, [0] * 4, LoraLegoParams(rank=5)
    )  # more clusters than distinct units
    torch.testing.assert_close(padded.head(0).dense(), delta.dense(), rtol=1e-5, atol=1e-5)
    assert padded.A.shape == (5, D_IN) and torch.isfinite(padded.A).all()


def test_a_centroid_keeps_its_members_mean_norms_and_weighs_its_share_of_tasks():
    """Two near-opposite units in one cluster: the plain mean would almost vanish (norm decay)."""
    a = torch.tensor([[1.0, 0.0], [-0.8, 0.2]])
    b = torch.tensor([[2.0, -1.6], [0.0, 0.4]])  # columns: the units' b parts
    deltas = [LoraDelta(a[:1], b[:, :1]), LoraDelta(a[1:], b[:, 1:])]
    merged = merge_lora_lego(deltas, [0, 0], LoraLegoParams(rank=1))
    mean_a = torch.linalg.norm(a, dim=1).mean()
    mean_b = torch.linalg.norm(b, dim=0).mean()
    torch.testing.assert_close(torch.linalg.norm(merged.A[0]), mean_a)
    torch.testing.assert_close(torch.linalg.norm(merged.B[0, :, 0]), mean_b)  # weighted n_c / N = 2 / 2


def test_kmeans_is_seeded_and_separates_clear_clusters():
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(10, 3, generator=gen) + 20, torch.randn(10, 3, generator=gen) - 20])
    labels = kmeans(points, 2, torch.Generator().manual_seed(5))
    assert (
        len(set(labels[:10].tolist())) == 1
        and len(set(labels[10:].tolist())) == 1
        and labels[0] != labels[10]
    )
    torch.testing.assert_close(kmeans(points, 2, torch.Generator().manual_seed(5)), labels)
