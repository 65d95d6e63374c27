"""Random LoRA module updates for the methods' tests: seeded, A then B for each rank in turn."""

import torch

from hydraopt.factors import LoraDelta


def random_deltas(ranks: list[int], d_out: int, d_in: int, seed: int) -> list[LoraDelta]:
    gen = torch.Generator().manual_seed(seed)
    return [
        LoraDelta(torch.randn(r, d_in, generator=gen), torch.randn(d_out, r, generator=gen)) for r in ranks
    ]
