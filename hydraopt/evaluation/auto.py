"""HydraOpt `auto`: the smallest (K, r') whose evaluated retention meets the gate.

Settings are tried from the smallest storage upward (only those storing less than the sources);
the first one whose every task passes the gate wins. If none passes, the tasks that failed at
every setting are left out (they stay on their original adapters) and the search runs again on
the others; if every task passed somewhere but never all at once, the task with the lowest best
retention is left out. Evaluation is a callback, so the search needs no model of its own.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydraopt.adapter import Adapter
from hydraopt.evaluation.function import TaskScore
from hydraopt.evaluation.gate import Gate, GateDecision
from hydraopt.merge import MergeResult, merge_adapters
from hydraopt.methods.base import Layout
from hydraopt.methods.hydraopt import HYDRAOPT

Evaluate = Callable[[MergeResult], Mapping[str, TaskScore]]
Refine = Callable[[MergeResult], MergeResult]


@dataclass(frozen=True)
class Setting:
    heads: int
    rank: int
    storage_ratio: float


@dataclass
class AutoOutcome:
    """The chosen setting and its result (None if no task could be kept), and what was tried."""

    setting: Setting | None
    result: MergeResult | None
    decision: GateDecision | None
    excluded: dict[str, str] = field(default_factory=dict)
    tried: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "setting": vars(self.setting) if self.setting else None,
            "decision": self.decision.to_dict() if self.decision else None,
            "excluded": self.excluded,
            "tried": self.tried,
        }


def default_heads(tasks: int) -> list[int]:
    """1, 2, 4, ... below N, and N."""
    heads, k = [], 1
    while k < tasks:
        heads.append(k)
        k *= 2
    return heads + [tasks]


def default_ranks(max_rank: int) -> list[int]:
    return sorted({max(1, max_rank // 4), max(1, max_rank // 2), max_rank, 2 * max_rank})


def settings(
    adapters: Sequence[Adapter], heads: Sequence[int] | None = None, ranks: Sequence[int] | None = None
) -> list[Setting]:
    """Every (K, r') storing less than the sources, smallest storage first; K is capped at N."""
    layout = Layout.of(adapters)
    source = sum(a.num_params for a in adapters)
    n = len(adapters)
    heads = {min(k, n) for k in heads} if heads else default_heads(n)  # K above N (a smaller group) is N
    ranks = ranks or default_ranks(max(a.max_rank for a in adapters))
    stored = {(k, r): HYDRAOPT.storage(layout, r, k) for k in heads for r in ranks if k >= 1}
    found = {Setting(k, r, params / source) for (k, r), params in stored.items() if params < source}
    return sorted(found, key=lambda s: (s.storage_ratio, s.heads))


def auto_hydraopt(
    adapters: Sequence[Adapter],
    evaluate: Evaluate,
    originals: Mapping[str, TaskScore],
    *,
    gate: Gate | None = None,
    heads: Sequence[int] | None = None,
    ranks: Sequence[int] | None = None,
    refine: Refine | None = None,
    **merge_options: Any,
) -> AutoOutcome:
    """Search (K, r') for `adapters`; `evaluate(result)` scores each task of a merge, after
    `refine(result)` (e.g. `hydraopt.refine.refine` on calibration statistics) where given."""
    gate = gate or Gate()
    kept, excluded, tried = list(adapters), {}, []
    while kept:
        candidates = settings(kept, heads, ranks)
        if not candidates:
            excluded |= {a.task_name: "no (K, r') stores less than the original adapters" for a in kept}
            break
        passed: set[str] = set()
        best: dict[str, float] = {}
        last_reason: dict[str, str] = {}
        for setting in candidates:
            result = merge_adapters(kept, "hydraopt", heads=setting.heads, rank=setting.rank, **merge_options)
            if refine is not None:
                result = refine(result)
            decision = gate.decide({a.task_name: originals[a.task_name] for a in kept}, evaluate(result))
            tried.append({**vars(setting), "tasks": len(kept), "publish": decision.publish,
                          "failing": decision.failing})  # fmt: skip
            if decision.publish:
                return AutoOutcome(setting, result, decision, excluded, tried)
            for task, verdict in decision.verdicts.items():
                if verdict.passed:
                    passed.add(task)
                else:
                    last_reason[task] = verdict.reason
                kept_share = verdict.retention if verdict.retention is not None else -1.0
                best[task] = max(best.get(task, -1.0), kept_share)
        never = [a.task_name for a in kept if a.task_name not in passed]
        for task in never:
            excluded[task] = f"fails the gate at every setting; at the largest: {last_reason[task]}"
        if not never:
            task = min(best, key=lambda t: best[t])
            excluded[task] = f"passes only where others fail (best retention {best[task]:.3f})"
        kept = [a for a in kept if a.task_name not in excluded]
    return AutoOutcome(None, None, None, excluded, tried)
