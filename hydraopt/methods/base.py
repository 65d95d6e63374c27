"""The merge-method interface: typed parameters plus two pure functions.

A method sees one module at a time (`merge_module`) over the normalised factors of every task,
and once for the whole group (`assign`) to map tasks to B' heads.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydraopt.adapter import Adapter
from hydraopt.factors import ModuleFactors

RANK_HELP = "r', rank of the shared A' (default: the largest source rank)"
MergeModule = Callable[..., ModuleFactors]
Assign = Callable[[Sequence[Adapter], Any], list[int]]


@dataclass(frozen=True)
class Layout:
    """What a merge's storage depends on: `tasks` N, `modules` M, Σd_in and Σd_out over the modules."""

    tasks: int
    modules: int
    sum_in: int
    sum_out: int

    @classmethod
    def of(cls, adapters: Sequence[Adapter]) -> "Layout":
        shapes = [delta.shape for delta in adapters[0].modules.values()]
        return cls(len(adapters), len(shapes), sum(s[1] for s in shapes), sum(s[0] for s in shapes))


Storage = Callable[[Layout, int, int], int]  # (layout, rank r', heads K) -> parameters stored


def shared_a_storage(layout: Layout, rank: int, heads: int) -> int:
    """r'·Σd_in + K·r'·Σd_out: one A' shared by K heads B' (one head: a single LoRA of rank r')."""
    return rank * layout.sum_in + heads * rank * layout.sum_out


def knob(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A field of a params dataclass with its help text; `cli` hints for `hydracat merge`
    (`flag`: another flag name, `choices`: the allowed values). CLI flags and flow parameters
    are derived from these fields."""
    return field(default=default, metadata={"help": help, **cli})


def single_head(adapters: Sequence[Adapter], params: Any) -> list[int]:
    """Every task on head 0: the baselines' one merged adapter."""
    return [0] * len(adapters)


@dataclass(frozen=True)
class MergeMethod:
    """One registry entry.

    `params_type` is a dataclass whose fields (with defaults) are the method's knobs; every
    method has `rank: int | None` (r', default: the largest source rank). `merge_module`
    gets the deltas of one module (one per task, float32, on the compute device), the task ->
    head assignment, the resolved params and (keyword `module`) the module's name, for methods
    whose randomness must differ per module; it returns A' with exactly `rank` rows and one B'
    per head (`SharedLowRank`), or a `CoreLowRank` (one U, V per head, a core per task).
    `storage(layout, rank, heads)` is what a result stores, known before merging. `refinable`:
    its merges can go through refinement and distillation (`hydraopt.evaluation.pipeline`).
    """

    name: str
    params_type: type
    merge_module: MergeModule
    assign: Assign = single_head
    storage: Storage = shared_a_storage
    description: str = ""
    refinable: bool = False
