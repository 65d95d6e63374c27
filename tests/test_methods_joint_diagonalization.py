"""JD-Full and JD-Diag: equal to the authors' algorithms run on the dense updates, exact on updates
that share a basis, one (U, V) per task group, and schema-3 bundles whose exports PEFT loads."""

import pytest
import torch

from hydraopt.evaluation.pipeline import restricted
from hydraopt.factors import LoraDelta
from hydraopt.formats.bundle import read_bundle, write_bundle
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import merge_adapters
from hydraopt.methods import get_method
from hydraopt.methods.joint_diagonalization import JointDiagonalizationParams
from hydraopt.storage import storage_report
from tests.bundle_checks import assert_exports_match_the_factors
from tests.deltas import random_deltas

D_OUT, D_IN = 30, 22


def lora_deltas(count: int, rank: int, seed: int = 5) -> list[LoraDelta]:
    return random_deltas([rank] * count, D_OUT, D_IN, seed)


def shared_basis_deltas(count: int, rank: int, diagonal: bool, seed: int = 7) -> list[LoraDelta]:
    """ΔW_i = U₀ Σ_i V₀ᵀ with one U₀, V₀ (not orthonormal) and Σ_i full or diagonal."""
    gen = torch.Generator().manual_seed(seed)
    u0, v0 = torch.randn(D_OUT, rank, generator=gen), torch.randn(D_IN, rank, generator=gen)
    deltas = []
    for _ in range(count):
        core = (
            torch.diag(torch.randn(rank, generator=gen))
            if diagonal
            else torch.randn(rank, rank, generator=gen)
        )
        deltas.append(LoraDelta(core @ v0.T, u0))
    return deltas


def top_left(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    return torch.linalg.svd(matrix, full_matrices=False)[0][:, :rank]


def authors_jd_full(dense: list[torch.Tensor], rank: int, iterations: int) -> list[torch.Tensor]:
    """The authors' full_lora_pca on dense ΔW_i (U: top left singular vectors of [ΔW_i V]_i,
    then V of [ΔW_iᵀ U]_i), started where ours starts; returns U Σ_i Vᵀ."""
    u, v = top_left(torch.cat(dense, dim=1), rank), top_left(torch.cat(dense, dim=0).T, rank)
    for _ in range(iterations):
        u = top_left(torch.cat([w @ v for w in dense], dim=1), rank)
        v = top_left(torch.cat([w.T @ u for w in dense], dim=1), rank)
    return [u @ (u.T @ w @ v) @ v.T for w in dense]


def authors_jd_diag(dense: list[torch.Tensor], rank: int, iterations: int) -> list[torch.Tensor]:
    """The authors' diagonal_lora_pca_sparse (no sparsity) on dense ΔW_i: Cholesky solve for
    the diagonals, least squares for U then V, rescale; returns U diag(s_i) Vᵀ."""
    u, v = top_left(torch.cat(dense, dim=1), rank), top_left(torch.cat(dense, dim=0).T, rank)

    def sigmas() -> list[torch.Tensor]:
        chol = torch.linalg.cholesky((u.T @ u) * (v.T @ v))
        return [torch.cholesky_solve(torch.diagonal(u.T @ w @ v)[:, None], chol)[:, 0] for w in dense]

    for _ in range(iterations):
        s = sigmas()
        lhs = sum((v * si).T @ (v * si) for si in s)
        u = sum(w @ (v * si) for w, si in zip(dense, s)) @ torch.linalg.inv(lhs)
        lhs = sum((u * si).T @ (u * si) for si in s)
        v = sum(w.T @ (u * si) for w, si in zip(dense, s)) @ torch.linalg.inv(lhs)
        norm = torch.sqrt(sum((si**2).sum() for si in s))
        u = u * norm
        c = torch.sqrt(torch.linalg.norm(v) / torch.linalg.norm(u))
        u, v = u * c, v / c
    return [(u * si) @ v.T for si in sigmas()]


def merged(name: str, deltas: list[LoraDelta], **params) -> list[torch.Tensor]:
    method = get_method(name)
    result = method.merge_module(deltas, [0] * len(deltas), JointDiagonalizationParams(**params))
    return [result.task_delta(i, 0).dense().double() for i in range(len(deltas))]


@pytest.mark.parametrize(("name", "reference", "iterations"), [
    ("jd_full", authors_jd_full, 1), ("jd_full", authors_jd_full, 10),
    ("jd_diag", authors_jd_diag, 5), ("jd_diag", authors_jd_diag, 100),
])  # fmt: skip
def test_the_factored_fit_equals_the_authors_algorithm_on_dense_updates(name, reference, iterations):
    deltas = lora_deltas(count=4, rank=3)
    expected = reference([d.dense().double() for d in deltas], rank=5, iterations=iterations)
    for ours, theirs in zip(merged(name, deltas, rank=5, iterations=iterations), expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("name", "diagonal"), [("jd_full", False), ("jd_diag", True), ("jd_full", True)])
def test_updates_sharing_one_basis_are_recovered_exactly(name, diagonal):
    deltas = shared_basis_deltas(count=5, rank=3, diagonal=diagonal)
    for ours, delta in zip(merged(name, deltas, rank=3), deltas):
        relative = torch.linalg.norm(ours - delta.dense().double()) / torch.linalg.norm(delta.dense())
        assert relative < 1e-4


def test_more_full_iterations_never_fit_worse():
    deltas = lora_deltas(count=6, rank=4)
    dense = [d.dense().double() for d in deltas]

    def error(iterations: int) -> float:
        fitted = merged("jd_full", deltas, rank=4, iterations=iterations)
        return sum(torch.linalg.norm(w - f) ** 2 for w, f in zip(dense, fitted)).item()

    errors = [error(n) for n in (0, 1, 3, 10)]
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]


def test_groups_get_their_own_basis():
    """Two families of tasks, each sharing its own basis: K=2 groups recovers both exactly."""
    families = shared_basis_deltas(3, 2, diagonal=False, seed=1) + shared_basis_deltas(
        3, 2, diagonal=False, seed=2
    )
    result = get_method("jd_full").merge_module(
        families, [0, 0, 0, 1, 1, 1], JointDiagonalizationParams(rank=2)
    )
    assert result.heads == 2 and result.U.shape == (2, D_OUT, 2) and result.cores.shape == (6, 2, 2)
    for i, delta in enumerate(families):
        torch.testing.assert_close(result.task_delta(i, i // 3).dense(), delta.dense(), rtol=1e-3, atol=1e-3)
    one_group = merged("jd_full", families, rank=2)
    assert any(torch.linalg.norm(f - d.dense().double()) > 1e-2 for f, d in zip(one_group, families))


@pytest.fixture(scope="module")
def adapters(peft_adapters):
    return [load_adapter(p) for p in peft_adapters]


@pytest.mark.parametrize(("name", "core_params"), [("jd_full", 3 * 3), ("jd_diag", 3)])
def test_storage_counts_the_bases_once_per_group_and_a_core_per_task(adapters, name, core_params):
    result = merge_adapters(adapters, name, rank=3, heads=2)
    shapes = sum(d.shape[0] + d.shape[1] for d in adapters[0].modules.values())
    modules = len(adapters[0].modules)
    assert (
        storage_report(adapters, result).bundle_params
        == 2 * 3 * shapes + len(adapters) * core_params * modules
    )
    assert sorted(set(result.assignment.values())) == [0, 1]


@pytest.mark.parametrize("name", ["jd_full", "jd_diag"])
def test_the_bundle_is_schema_3_reads_back_and_exports_peft_loras(tiny_base, adapters, tmp_path, name):
    result = merge_adapters(adapters, name, rank=4, heads=2)
    manifest = write_bundle(adapters, result, tmp_path / "bundle")
    assert manifest["schema_version"] == 3 and manifest["heads"] == 2
    bundle = read_bundle(tmp_path / "bundle")
    for module, factors in result.modules.items():
        for stored, made in [
            (bundle.modules[module].U, factors.U),
            (bundle.modules[module].cores, factors.cores),
        ]:
            torch.testing.assert_close(stored, made)
        for task in result.tasks:
            torch.testing.assert_close(
                bundle.task_delta(task, module).dense(), result.task_delta(task, module).dense()
            )
    assert_exports_match_the_factors(bundle, tiny_base)


def test_a_result_scored_on_some_of_its_tasks_keeps_each_tasks_own_core(adapters):
    """Scoring a subset (the pipeline's `restricted`) must not shift the per-task cores."""
    result = merge_adapters(adapters, "jd_full", rank=3)
    later = result.tasks[1:]
    subset = restricted(result, later)
    for task in later:
        for module in result.modules:
            torch.testing.assert_close(
                subset.task_delta(task, module).dense(), result.task_delta(task, module).dense()
            )
