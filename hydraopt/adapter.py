"""The normalised adapter: explicit per-module factors plus the identity needed to group them."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hydraopt.errors import IncompatibleAdaptersError, UnsupportedFeatureError
from hydraopt.factors import LoraDelta
from hydraopt.formats.compat import modules_digest


@dataclass(frozen=True)
class CompatKey:
    """Adapters merge together only when these are equal (ranks may differ)."""

    base_model: str
    revision: str | None
    adapter_type: str
    modules: frozenset[tuple[str, int, int]]

    @property
    def modules_digest(self) -> str:
        """The module-shape digest the registry records for the adapter version."""
        return modules_digest(self.modules)

    def difference(self, other: "CompatKey") -> str:
        """A short human explanation of why two keys differ."""
        if (self.base_model, self.revision) != (other.base_model, other.revision):
            return f"base model {self.base_model}@{self.revision} vs {other.base_model}@{other.revision}"
        if self.adapter_type != other.adapter_type:
            return f"adapter type {self.adapter_type} vs {other.adapter_type}"
        only_self = sorted(self.modules - other.modules)[:3]
        only_other = sorted(other.modules - self.modules)[:3]
        return f"modules (name, d_out, d_in) differ: {only_self} vs {only_other}"


@dataclass
class Adapter:
    """A LoRA adapter normalised to ΔW_m = B_m A_m (scale folded into B_m, float32)."""

    name: str
    base_model: str
    revision: str | None
    adapter_type: str
    modules: dict[str, LoraDelta]
    dtype: torch.dtype
    sha256: str
    config: dict
    path: Path | None = None
    unsupported: tuple[str, ...] = ()
    task: str | None = None
    version: str | None = None
    adapter_id: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def task_name(self) -> str:
        return self.task or self.name

    @property
    def max_rank(self) -> int:
        return max(delta.rank for delta in self.modules.values())

    @property
    def num_params(self) -> int:
        """Stored parameters: Σ_m r_m (d_in + d_out)."""
        return sum(d.rank * (d.shape[0] + d.shape[1]) for d in self.modules.values())

    def compat_key(self) -> CompatKey:
        shapes = frozenset((name, *delta.shape) for name, delta in self.modules.items())
        return CompatKey(self.base_model, self.revision, self.adapter_type, shapes)


def check_mergeable(adapters: list[Adapter], allow_unsupported: bool = False) -> None:
    """Refuse a group that cannot be merged, naming the adapters at fault."""
    if not adapters:
        raise ValueError("nothing to merge: no adapters given")
    tasks = [a.task_name for a in adapters]
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise ValueError(f"each task may appear once in a merge; repeated: {duplicates}")
    first = adapters[0]
    for other in adapters[1:]:
        if other.compat_key() != first.compat_key():
            raise IncompatibleAdaptersError(
                f"adapters {first.name!r} and {other.name!r} cannot be merged: "
                f"{first.compat_key().difference(other.compat_key())}"
            )
    if not allow_unsupported:
        for adapter in adapters:
            if adapter.unsupported:
                raise UnsupportedFeatureError(
                    f"adapter {adapter.name!r} uses features hydraopt does not merge: "
                    f"{', '.join(adapter.unsupported)} (pass allow_unsupported to merge "
                    "without them; they are then recorded as dropped)"
                )
