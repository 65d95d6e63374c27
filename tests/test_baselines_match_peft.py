"""The task-arithmetic family agrees with PEFT's own merge_utils and keeps rank r'."""

import pytest
import torch
from peft.utils import merge_utils

from hydraopt.factors import LoraDelta
from hydraopt.methods import get_method
from hydraopt.methods.task_arithmetic import (
    DareLinearParams,
    DareTiesParams,
    TaskArithmeticParams,
    TiesParams,
    generalized_task_arithmetic,
)

GEN = torch.Generator().manual_seed(0)
TENSORS = [torch.randn(16, 12, generator=GEN) for _ in range(4)]
WEIGHTS = torch.tensor([0.7, 1.0, 0.3, 1.5])


@pytest.mark.parametrize("density", [0.3, 0.7])
@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_ties_equals_peft(density, sign_method):
    ours = generalized_task_arithmetic(
        torch.stack(TENSORS), WEIGHTS, sparsify="magnitude", density=density, sign_method=sign_method
    )
    torch.testing.assert_close(ours, merge_utils.ties(TENSORS, WEIGHTS, density, sign_method), rtol=0, atol=0)


def test_task_arithmetic_equals_peft():
    ours = generalized_task_arithmetic(torch.stack(TENSORS), WEIGHTS)
    torch.testing.assert_close(ours, merge_utils.task_arithmetic(TENSORS, WEIGHTS))


@pytest.mark.parametrize("density", [0.3, 0.7])
@pytest.mark.parametrize("with_signs", [False, True])
def test_dare_equals_peft_with_the_same_seed(density, with_signs):
    """PEFT draws from the global RNG, we from a seeded generator: same seed, same stream."""
    torch.manual_seed(11)
    if with_signs:
        expected = merge_utils.dare_ties(TENSORS, WEIGHTS, density)
    else:
        expected = merge_utils.dare_linear(TENSORS, WEIGHTS, density)
    ours = generalized_task_arithmetic(
        torch.stack(TENSORS),
        WEIGHTS,
        sparsify="random",
        density=density,
        sign_method="total" if with_signs else None,
        generator=torch.Generator().manual_seed(11),
    )
    torch.testing.assert_close(ours, expected)


def lora_deltas(ranks, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [LoraDelta(torch.randn(r, 12, generator=gen), torch.randn(16, r, generator=gen)) for r in ranks]


@pytest.mark.parametrize(
    ("name", "params", "merge"),
    [
        (
            "task_arithmetic",
            TaskArithmeticParams(rank=3),
            lambda t: merge_utils.task_arithmetic(t, torch.full((3,), 1 / 3)),
        ),
        ("ties", TiesParams(rank=3, density=0.5), lambda t: merge_utils.ties(t, torch.ones(3), 0.5)),
        (
            "dare_linear",
            DareLinearParams(rank=3, seed=4),
            lambda t: merge_utils.dare_linear(t, torch.full((3,), 1 / 3), 0.5),
        ),
        ("dare_ties", DareTiesParams(rank=3, seed=4), lambda t: merge_utils.dare_ties(t, torch.ones(3), 0.5)),
    ],
)
def test_registered_method_is_the_rank_r_truncation_of_the_merged_update(name, params, merge):
    deltas = lora_deltas([2, 4, 3])
    shared = get_method(name).merge_module(deltas, [0, 0, 0], params)
    assert shared.A.shape == (3, 12) and shared.B.shape == (1, 16, 3)
    torch.manual_seed(4)
    merged = merge([d.dense() for d in deltas])
    u, s, vh = torch.linalg.svd(merged)
    reference = (u[:, :3] * s[:3]) @ vh[:3]
    torch.testing.assert_close(shared.B[0] @ shared.A, reference, rtol=1e-4, atol=1e-5)


def test_task_arithmetic_at_full_rank_is_exact():
    deltas = lora_deltas([2, 4, 3])
    params = TaskArithmeticParams(rank=9, weights=[0.2, 0.5, 1.0])
    shared = get_method("task_arithmetic").merge_module(deltas, [0, 0, 0], params)
    expected = sum(w * d.dense() for w, d in zip(params.weights, deltas))
    assert torch.linalg.norm(shared.B[0] @ shared.A - expected) / torch.linalg.norm(expected) < 1e-5


def test_dare_is_reproducible_per_seed():
    deltas = lora_deltas([4, 4])
    method = get_method("dare_linear")
    first = method.merge_module(deltas, [0, 0], DareLinearParams(rank=4, seed=1))
    again = method.merge_module(deltas, [0, 0], DareLinearParams(rank=4, seed=1))
    other = method.merge_module(deltas, [0, 0], DareLinearParams(rank=4, seed=2))
    torch.testing.assert_close(first.B[0] @ first.A, again.B[0] @ again.A)
    assert not torch.allclose(first.B[0] @ first.A, other.B[0] @ other.A)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ties", TiesParams(rank=2, density=0.0), "density"),
        ("dare_ties", DareTiesParams(rank=2, density=1.5), "density"),
        ("task_arithmetic", TaskArithmeticParams(rank=2, weights=[1.0]), "weights has 1 entries for 2 tasks"),
    ],
)
def test_bad_params_are_refused(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_method(name).merge_module(lora_deltas([2, 2]), [0, 0], params)
