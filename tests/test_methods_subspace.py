"""Core Space and KnOTS: equal to the authors' constructions on dense updates (with PEFT's merges in
their subspaces), the projections lossless, and task arithmetic unchanged by either subspace."""

import pytest
import torch
from peft.utils import merge_utils

from hydraopt.factors import LoraDelta
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import merge_adapters
from hydraopt.methods import get_method
from hydraopt.methods.core_space import core_bases
from hydraopt.methods.knots import aligned_blocks
from hydraopt.methods.task_arithmetic import SubspaceMergeParams
from tests.deltas import random_deltas

D_OUT, D_IN = 26, 20
RANKS = [3, 2, 4]


def lora_deltas(seed: int = 11) -> list[LoraDelta]:
    return random_deltas(RANKS, D_OUT, D_IN, seed)


def best_rank(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


PEFT_MERGES = {  # PEFT's merge_utils with the family's default weights (1/N linear, 1 for TIES)
    "task_arithmetic": lambda t: merge_utils.task_arithmetic(t, torch.full((len(t),), 1 / len(t))),
    "ties": lambda t: merge_utils.ties(t, torch.ones(len(t)), 0.5),
    "dare_linear": lambda t: merge_utils.dare_linear(t, torch.full((len(t),), 1 / len(t)), 0.5),
    "dare_ties": lambda t: merge_utils.dare_ties(t, torch.ones(len(t)), 0.5),
}


def authors_core_space(deltas: list[LoraDelta], merge: str) -> torch.Tensor:
    """get_core_matrices + _merge_tensors + U_B_ref M V_A_ref on dense updates."""
    u_ref = torch.linalg.svd(torch.cat([d.B for d in deltas], dim=1), full_matrices=False)[0]
    vh_ref = torch.linalg.svd(torch.cat([d.A for d in deltas], dim=0), full_matrices=False)[2]
    cores = [u_ref.T @ d.dense() @ vh_ref.T for d in deltas]
    torch.manual_seed(0)
    return u_ref @ PEFT_MERGES[merge](cores) @ vh_ref


def authors_knots(deltas: list[LoraDelta], merge: str) -> torch.Tensor:
    """SVDMerger: SVD of the dense updates side by side, Σ folded into the V blocks, merge, U @ merged."""
    u, s, vh = torch.linalg.svd(torch.cat([d.dense() for d in deltas], dim=1).double(), full_matrices=False)
    kept = s > 1e-5
    blocks = list(torch.split(torch.diag(s[kept]) @ vh[kept], D_IN, dim=1))
    torch.manual_seed(0)
    return u[:, kept] @ PEFT_MERGES[merge]([b.float() for b in blocks]).double()


@pytest.mark.parametrize("merge", list(PEFT_MERGES))
@pytest.mark.parametrize(
    ("name", "reference"), [("core_space", authors_core_space), ("knots", authors_knots)]
)
def test_the_factored_merge_equals_the_authors_construction(name, reference, merge):
    deltas = lora_deltas()
    full_rank = sum(RANKS)
    result = get_method(name).merge_module(
        deltas, [0, 0, 0], SubspaceMergeParams(rank=full_rank, merge=merge)
    )
    expected = reference(deltas, merge).double()
    torch.testing.assert_close(result.head(0).dense().double(), expected, rtol=1e-4, atol=1e-4)
    truncated = get_method(name).merge_module(deltas, [0, 0, 0], SubspaceMergeParams(rank=4, merge=merge))
    assert truncated.A.shape == (4, D_IN) and truncated.B.shape == (1, D_OUT, 4)
    torch.testing.assert_close(
        truncated.head(0).dense().double(), best_rank(expected, 4), rtol=1e-3, atol=1e-3
    )


def test_both_projections_are_lossless():
    deltas = lora_deltas()
    u_ref, vh_ref = core_bases(deltas)
    basis, blocks = aligned_blocks(deltas)
    for delta, block in zip(deltas, blocks):
        torch.testing.assert_close(
            u_ref @ (u_ref.T @ delta.dense() @ vh_ref.T) @ vh_ref, delta.dense(), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(basis @ block, delta.dense(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["core_space", "knots"])
def test_task_arithmetic_in_the_subspace_is_task_arithmetic(name):
    """A linear merge commutes with a lossless projection; TIES does not (its pruning sees coordinates)."""
    deltas = lora_deltas()
    full_rank = sum(RANKS)
    plain = get_method("task_arithmetic").params_type(rank=full_rank)
    expected = get_method("task_arithmetic").merge_module(deltas, [0, 0, 0], plain).head(0).dense()
    linear = get_method(name).merge_module(
        deltas, [0, 0, 0], SubspaceMergeParams(rank=full_rank, merge="task_arithmetic")
    )
    torch.testing.assert_close(linear.head(0).dense(), expected, rtol=1e-4, atol=1e-4)
    ties = get_method(name).merge_module(deltas, [0, 0, 0], SubspaceMergeParams(rank=full_rank))
    dense_ties = get_method("ties").merge_module(
        deltas, [0, 0, 0], get_method("ties").params_type(rank=full_rank)
    )
    assert not torch.allclose(ties.head(0).dense(), dense_ties.head(0).dense(), atol=1e-3)


def test_an_unknown_subspace_merge_is_refused():
    with pytest.raises(ValueError, match="merge must be one of"):
        SubspaceMergeParams(merge="tsv")


@pytest.mark.parametrize("name", ["core_space", "knots"])
def test_real_adapters_merge_into_one_head(peft_adapters, name):
    adapters = [load_adapter(p) for p in peft_adapters]
    result = merge_adapters(adapters, name, rank=6, merge="dare_ties", seed=3)
    assert result.heads == 1 and result.rank == 6 and result.params["merge"] == "dare_ties"
