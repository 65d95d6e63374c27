"""The task-arithmetic family: equal to PEFT's merge_utils, rank-r' single-head results."""

import pytest
import torch
from peft.utils import merge_utils

from hydraopt.factors import LoraDelta, SharedLowRank
from hydraopt.methods import get_method
from hydraopt.methods.task_arithmetic import (
    DareLinearParams,
    DareTiesParams,
    TaskArithmeticParams,
    TiesParams,
    generalized_task_arithmetic,
)
from tests.deltas import random_deltas

D_OUT, D_IN = 20, 14
WEIGHTS = torch.tensor([0.7, 1.0, 0.3, 1.5, -0.4])


def random_tensors(count: int = 5, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(D_OUT, D_IN, generator=gen) for _ in range(count)]


def lora_deltas(ranks: list[int], seed: int = 1) -> list[LoraDelta]:
    return random_deltas(ranks, D_OUT, D_IN, seed)


def rank_truncation(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).float()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (torch.linalg.norm(actual - expected) / torch.linalg.norm(expected)).item()


def test_task_arithmetic_equals_peft():
    tensors = random_tensors()
    ours = generalized_task_arithmetic(torch.stack(tensors), WEIGHTS)
    torch.testing.assert_close(ours, merge_utils.task_arithmetic(tensors, WEIGHTS))


@pytest.mark.parametrize("density", [0.3, 0.7])
@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_ties_equals_peft_exactly(density, sign_method):
    tensors = random_tensors()
    ours = generalized_task_arithmetic(
        torch.stack(tensors),
        WEIGHTS,
        sparsify="magnitude",
        density=density,
        sign_method=sign_method,
    )
    expected = merge_utils.ties(tensors, WEIGHTS, density, sign_method)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize("density", [0.3, 0.7])
def test_dare_linear_equals_peft_exactly_with_the_same_seed(density):
    """PEFT draws from the global RNG, we from our own CPU generator: same seed, same stream."""
    tensors = random_tensors()
    torch.manual_seed(11)
    expected = merge_utils.dare_linear(tensors, WEIGHTS, density)
    ours = generalized_task_arithmetic(
        torch.stack(tensors),
        WEIGHTS,
        sparsify="random",
        density=density,
        generator=torch.Generator().manual_seed(11),
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize("density", [0.3, 0.7])
@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_dare_ties_equals_peft_exactly_with_the_same_seed(density, sign_method):
    tensors = random_tensors()
    torch.manual_seed(12)
    expected = merge_utils.dare_ties(tensors, WEIGHTS, density, sign_method)
    ours = generalized_task_arithmetic(
        torch.stack(tensors),
        WEIGHTS,
        sparsify="random",
        density=density,
        sign_method=sign_method,
        generator=torch.Generator().manual_seed(12),
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_random_pruning_keeps_about_density_and_rescales():
    tensor = torch.ones(1, 200, 200)
    pruned = generalized_task_arithmetic(
        tensor,
        torch.ones(1),
        sparsify="random",
        density=0.3,
        generator=torch.Generator().manual_seed(0),
    )
    kept = pruned != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(pruned[kept], torch.full_like(pruned[kept], 1 / 0.3))


# PEFT's defaults as ours: a mean for task_arithmetic and dare_linear, weight 1 for the TIES pair.
CASES = [
    (
        "task_arithmetic",
        TaskArithmeticParams(rank=3),
        lambda t: merge_utils.task_arithmetic(t, torch.full((len(t),), 1 / len(t))),
    ),
    (
        "ties",
        TiesParams(rank=3, density=0.3, weights=[0.5, 1.0, 2.0]),
        lambda t: merge_utils.ties(t, torch.tensor([0.5, 1.0, 2.0]), 0.3),
    ),
    (
        "dare_linear",
        DareLinearParams(rank=3, density=0.7, seed=4),
        lambda t: merge_utils.dare_linear(t, torch.full((len(t),), 1 / len(t)), 0.7),
    ),
    (
        "dare_ties",
        DareTiesParams(rank=3, majority_sign_method="frequency", seed=4),
        lambda t: merge_utils.dare_ties(t, torch.ones(len(t)), 0.5, "frequency"),
    ),
]


@pytest.mark.parametrize(("name", "params", "peft_merge"), CASES)
def test_registered_method_is_the_rank_r_truncation_of_the_merged_update(name, params, peft_merge):
    deltas = lora_deltas([2, 4, 3])
    shared = get_method(name).merge_module(deltas, [0, 0, 0], params)
    assert isinstance(shared, SharedLowRank)
    assert shared.A.shape == (3, D_IN) and shared.B.shape == (1, D_OUT, 3)
    torch.manual_seed(getattr(params, "seed", 0))
    reference = rank_truncation(peft_merge([d.dense() for d in deltas]), 3)
    assert relative_error(shared.B[0] @ shared.A, reference) < 1e-4


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare_linear", "dare_ties"])
def test_rank_beyond_the_merged_rank_is_zero_padded(name):
    deltas = lora_deltas([1, 1], seed=3)
    params = get_method(name).params_type(rank=D_IN + 2)
    shared = get_method(name).merge_module(deltas, [0, 0], params)
    assert shared.A.shape == (D_IN + 2, D_IN) and shared.B.shape == (1, D_OUT, D_IN + 2)
    assert torch.count_nonzero(shared.A[D_IN:]) == 0


def test_task_arithmetic_at_full_rank_reproduces_the_weighted_sum():
    deltas = lora_deltas([2, 4, 3])
    params = TaskArithmeticParams(rank=9, weights=[0.2, -0.5, 1.0])
    shared = get_method("task_arithmetic").merge_module(deltas, [0, 0, 0], params)
    expected = sum(w * d.dense() for w, d in zip(params.weights, deltas))
    assert relative_error(shared.B[0] @ shared.A, expected) < 1e-5


@pytest.mark.parametrize(
    ("name", "params_type"), [("dare_linear", DareLinearParams), ("dare_ties", DareTiesParams)]
)
def test_dare_is_reproducible_for_a_seed_and_differs_across_seeds(name, params_type):
    deltas = lora_deltas([4, 4, 2])
    method = get_method(name)

    def merged(seed: int) -> torch.Tensor:
        shared = method.merge_module(deltas, [0, 0, 0], params_type(rank=4, seed=seed))
        return shared.B[0] @ shared.A

    torch.testing.assert_close(merged(1), merged(1), rtol=0, atol=0)
    assert not torch.allclose(merged(1), merged(2))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ties", TiesParams(rank=2, density=0.0), "density"),
        ("dare_linear", DareLinearParams(rank=2, density=-0.1), "density"),
        ("dare_ties", DareTiesParams(rank=2, density=1.5), "density"),
        ("task_arithmetic", TaskArithmeticParams(rank=2, weights=[1.0]), "1 entries for 2 tasks"),
        ("ties", TiesParams(rank=2, weights=[1.0, 1.0, 1.0]), "3 entries for 2 tasks"),
        ("dare_ties", DareTiesParams(rank=2, majority_sign_method="median"), "majority_sign"),
    ],
)
def test_bad_params_are_refused(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_method(name).merge_module(lora_deltas([2, 2]), [0, 0], params)


def test_generalized_task_arithmetic_refuses_a_weight_count_mismatch():
    with pytest.raises(ValueError, match="weights"):
        generalized_task_arithmetic(torch.stack(random_tensors(3)), torch.ones(2))


def test_dare_draws_a_different_mask_per_module_regression():
    """Bug: every module reseeded with `seed`, so same-shaped layers shared one drop mask."""
    deltas = [LoraDelta(torch.ones(2, 12), torch.ones(16, 2)) for _ in range(2)]
    method = get_method("dare_linear")
    params = DareLinearParams(rank=12, seed=3, density=0.5)
    layer0 = method.merge_module(deltas, [0, 0], params, module="model.layers.0.self_attn.q_proj")
    layer1 = method.merge_module(deltas, [0, 0], params, module="model.layers.1.self_attn.q_proj")
    again = method.merge_module(deltas, [0, 0], params, module="model.layers.0.self_attn.q_proj")
    torch.testing.assert_close(layer0.B[0] @ layer0.A, again.B[0] @ again.A)
    assert not torch.allclose(layer0.B[0] @ layer0.A, layer1.B[0] @ layer1.A)
