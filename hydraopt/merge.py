"""Merge a group of adapters with any registered method, one module at a time."""

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hydraopt.adapter import Adapter, check_mergeable
from hydraopt.device import resolve_device
from hydraopt.factors import LoraDelta, ModuleFactors
from hydraopt.methods import get_method

log = logging.getLogger(__name__)


@dataclass
class MergeResult:
    """The factors per module (shared A' and K heads B', or a method's other form), the
    task -> head map, and how they were made. `order` lists the merge's tasks as its per-task
    factors are stored (a CoreLowRank's cores); a result restricted to fewer `tasks` keeps it."""

    method: str
    params: dict[str, Any]
    tasks: list[str]
    assignment: dict[str, int]
    modules: dict[str, ModuleFactors]
    dtype: torch.dtype
    dropped_features: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)

    @property
    def heads(self) -> int:
        return max(self.assignment.values()) + 1

    @property
    def rank(self) -> int:
        return next(iter(self.modules.values())).rank

    @property
    def num_params(self) -> int:
        """r'·Σd_in + K·r'·Σd_out for shared A' and K heads."""
        return sum(m.num_params for m in self.modules.values())

    def task_delta(self, task: str, module: str) -> LoraDelta:
        return self.modules[module].task_delta((self.order or self.tasks).index(task), self.assignment[task])


def resolve_params(method_name: str, adapters: Sequence[Adapter], **overrides: Any) -> Any:
    """The method's typed params with defaults filled in (rank defaults to the max source rank)."""
    method = get_method(method_name)
    known = {f.name for f in dataclasses.fields(method.params_type)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"method {method_name!r} has no parameter(s) {unknown}; known: {sorted(known)}")
    params = method.params_type(**{k: v for k, v in overrides.items() if v is not None})
    if params.rank is None:
        params = dataclasses.replace(params, rank=max(a.max_rank for a in adapters))
    if params.rank < 1:
        raise ValueError(f"rank must be at least 1, got {params.rank}")
    return params


def validate_assignment(assignment: Sequence[int], tasks: Sequence[str]) -> None:
    """Heads must be numbered 0..K-1 with none left empty."""
    used = sorted(set(assignment))
    if used != list(range(len(used))):
        raise ValueError(f"heads must be numbered 0..K-1 with none empty; got {dict(zip(tasks, assignment))}")


def merge_adapters(
    adapters: Sequence[Adapter],
    method: str = "hydraopt",
    *,
    device: str | torch.device | None = None,
    allow_unsupported: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **params: Any,
) -> MergeResult:
    """Merge compatible adapters into one shared A' and K heads per module.

    Maths runs in float32 on `device` (CUDA when present); results come back on the CPU in
    float32 and `dtype` records the sources' dtype for writing. `progress(done, total)` is
    called after each module.
    """
    adapters = list(adapters)
    check_mergeable(adapters, allow_unsupported)
    merge_method = get_method(method)
    resolved = resolve_params(method, adapters, **params)
    tasks = [a.task_name for a in adapters]
    assignment = merge_method.assign(adapters, resolved)
    validate_assignment(assignment, tasks)
    compute = resolve_device(device)
    modules: dict[str, ModuleFactors] = {}
    names = sorted(adapters[0].modules)
    for done, name in enumerate(names, start=1):
        deltas = [a.modules[name].to(compute) for a in adapters]
        merged = merge_method.merge_module(deltas, assignment, resolved, module=name)
        modules[name] = merged.cpu()
        if progress:
            progress(done, len(names))
    log.info("merged %d adapters x %d modules with %s", len(adapters), len(modules), method)
    dtype = adapters[0].dtype
    for adapter in adapters[1:]:
        dtype = torch.promote_types(dtype, adapter.dtype)
    return MergeResult(
        method=method,
        params=dataclasses.asdict(resolved),
        tasks=tasks,
        assignment=dict(zip(tasks, assignment)),
        modules=modules,
        dtype=dtype,
        dropped_features={a.task_name: list(a.unsupported) for a in adapters if a.unsupported},
        order=tasks,
    )
