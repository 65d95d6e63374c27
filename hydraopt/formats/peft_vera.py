"""PEFT VeRA folders as input: every module's ΔW as a rank-r LoRA.

VeRA (PEFT's `VERA` type) trains two vectors per module, λ_b (d_out) and λ_d (r), over frozen
random projections `vera_A` (r × max d_in) and `vera_B` (max d_out × r) shared by all modules.
PEFT slices the projections to each module's shape, so ΔW = diag(λ_b) B[:d_out] diag(λ_d) A[:, :d_in]:
a LoRA with A = λ_d ∘ A[:, :d_in] and B = λ_b ∘ B[:d_out], merged like any other. The projections
are in the folder only when it was saved with `save_projection=True` (PEFT's default); without them
they would have to be regenerated from `projection_prng_key` by PEFT's own generator, which we do
not reproduce: such a folder is refused.
"""

import re
from collections.abc import Mapping

import torch

from hydraopt.errors import CorruptAdapterError, UnsupportedFeatureError
from hydraopt.factors import LoraDelta
from hydraopt.formats.layout import PEFT_PREFIX

PROJECTIONS = {"A": "base_model.vera_A", "B": "base_model.vera_B"}
VERA_KEY = re.compile(r"^(?P<module>.+)\.vera_lambda_(?P<part>b|d)(?:\.(?P<adapter>[^.]+))?$")


def vera_deltas(
    tensors: dict[str, torch.Tensor], config: dict, base_shapes: Mapping[str, tuple[int, ...]], origin: str
) -> dict[str, LoraDelta]:
    """Each module's (A, B) from the shared projections and its λ_b, λ_d (float32); a module's
    d_in is its base weight's (`base_shapes`: weight name -> shape)."""
    missing = [key for key in PROJECTIONS.values() if key not in tensors]
    if missing or config.get("save_projection") is False:
        raise UnsupportedFeatureError(
            f"{origin}: a VeRA adapter saved without its projections (save_projection=False, "
            f"{', '.join(missing) or 'none'} missing) cannot be merged; save it with save_projection=True"
        )
    vera_a, vera_b = (tensors[PROJECTIONS[part]].float() for part in "AB")
    rank = config["r"]
    if vera_a.dim() != 2 or vera_b.dim() != 2 or vera_a.shape[0] != rank or vera_b.shape[1] != rank:
        raise CorruptAdapterError(
            f"{origin}: projections vera_A {list(vera_a.shape)} and vera_B {list(vera_b.shape)} "
            f"do not have the config's rank {rank}"
        )
    lambdas: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key in PROJECTIONS.values():
            continue
        match = VERA_KEY.match(key)
        if not match or tensor.dim() != 1:
            raise CorruptAdapterError(f"{origin}: tensor {key!r} {list(tensor.shape)} is not a VeRA vector")
        lambdas.setdefault(match["module"].removeprefix(PEFT_PREFIX), {})[match["part"]] = tensor.float()
    if not lambdas:
        raise CorruptAdapterError(f"{origin}: no VeRA vectors found")
    deltas = {}
    for module, pair in sorted(lambdas.items()):
        if set(pair) != {"b", "d"}:
            raise CorruptAdapterError(
                f"{origin}: module {module!r} lacks vera_lambda_{'d' if 'b' in pair else 'b'}"
            )
        lambda_b, lambda_d = pair["b"], pair["d"]
        weight = base_shapes.get(f"{module}.weight")
        if weight is None or len(weight) != 2:
            raise CorruptAdapterError(f"{origin}: module {module!r} is not a linear layer of the base model")
        d_out, d_in = weight
        if (
            lambda_d.shape[0] != rank
            or lambda_b.shape[0] != d_out
            or d_out > vera_b.shape[0]
            or d_in > vera_a.shape[1]
        ):
            raise CorruptAdapterError(
                f"{origin}: module {module!r} ({d_out}×{d_in} in the base model) has λ_b {lambda_b.shape[0]} "
                f"and λ_d {lambda_d.shape[0]}; the projections are vera_A {list(vera_a.shape)}, "
                f"vera_B {list(vera_b.shape)}"
            )
        a = lambda_d[:, None] * vera_a[:, :d_in]
        deltas[module] = LoraDelta(a.contiguous(), (lambda_b[:, None] * vera_b[:d_out]).contiguous())
    return deltas
