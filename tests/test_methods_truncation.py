"""Per-adapter truncation: each task's own best rank-k factors, stored as a schema-2 bundle whose
per-task exports are real PEFT LoRAs."""

import pytest
import torch

from hydraopt.factors import LoraDelta
from hydraopt.formats.bundle import read_bundle, write_bundle
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import merge_adapters
from hydraopt.methods.truncation import TruncationParams, merge_truncation
from hydraopt.metrics import reconstruction_errors
from hydraopt.storage import storage_report
from tests.bundle_checks import assert_exports_match_the_factors
from tests.deltas import random_deltas

D_OUT, D_IN = 24, 18


def lora_deltas(ranks: list[int], seed: int = 3) -> list[LoraDelta]:
    return random_deltas(ranks, D_OUT, D_IN, seed)


def dense_best_rank_k(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_every_head_is_the_dense_best_rank_k_of_its_own_task(rank):
    deltas = lora_deltas([6, 4, 6])
    merged = merge_truncation(deltas, [0, 1, 2], TruncationParams(rank=rank))
    assert merged.per_head_a and merged.A.shape == (3, rank, D_IN) and merged.B.shape == (3, D_OUT, rank)
    for head, delta in enumerate(deltas):
        expected = dense_best_rank_k(delta.dense(), rank)
        torch.testing.assert_close(merged.head(head).dense().double(), expected, rtol=1e-4, atol=1e-4)


def test_a_rank_at_or_above_the_source_rank_loses_nothing_and_pads_with_zeros():
    (delta,) = lora_deltas([4])
    merged = merge_truncation([delta], [0], TruncationParams(rank=7))
    torch.testing.assert_close(merged.head(0).dense(), delta.dense(), rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(merged.A[0, 4:]) == 0 and torch.count_nonzero(merged.B[0, :, 4:]) == 0


@pytest.fixture(scope="module")
def adapters(peft_adapters):
    return [load_adapter(p) for p in peft_adapters]


def test_errors_are_the_discarded_singular_values_and_storage_is_k_over_r(adapters):
    result = merge_adapters(adapters, "truncation", rank=2)
    assert result.assignment == {a.task_name: i for i, a in enumerate(adapters)}
    errors = reconstruction_errors(adapters, result)
    for adapter in adapters:
        discarded, total = 0.0, 0.0
        for delta in adapter.modules.values():
            s = torch.linalg.svdvals(delta.dense().double())
            discarded, total = discarded + (s[2:] ** 2).sum().item(), total + (s**2).sum().item()
        assert errors[adapter.task_name]["relative_error"] == pytest.approx(discarded / total, rel=1e-3)
    storage = storage_report(adapters, result)
    shapes = sum(d.shape[0] + d.shape[1] for d in adapters[0].modules.values())
    assert storage.bundle_params == len(adapters) * 2 * shapes
    assert storage.source_params == sum(a.max_rank for a in adapters) * shapes  # ranks 4, 4, 8, 2


def test_the_bundle_is_schema_2_reads_back_and_exports_peft_loras(tiny_base, adapters, tmp_path):
    result = merge_adapters(adapters, "truncation", rank=3)
    manifest = write_bundle(adapters, result, tmp_path / "bundle")
    assert manifest["schema_version"] == 2 and manifest["heads"] == len(adapters)
    bundle = read_bundle(tmp_path / "bundle")
    for name, module in result.modules.items():
        torch.testing.assert_close(bundle.modules[name].A, module.A)
        torch.testing.assert_close(bundle.modules[name].B, module.B)
    assert_exports_match_the_factors(bundle, tiny_base)
    hydraopt = write_bundle(adapters, merge_adapters(adapters, "hydraopt", rank=3), tmp_path / "shared")
    assert hydraopt["schema_version"] == 1
