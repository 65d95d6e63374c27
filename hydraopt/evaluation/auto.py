"""HydraOpt `auto`: the smallest (K, r') whose evaluated retention meets the gate.

The answer is the setting an exhaustive search would pick (every (K, r') storing less than the
sources, tried from the smallest storage up, the first whose every task passes), found with
fewer evaluations on two assumptions: along each K retention grows with r' (so each K's passing
ranks are those above one boundary, found by bisection), and a `Screen`, a cheaper evaluation on
a slice of each task's eval rows, rules a setting out only when some task falls clearly (by its
`margin`) below the gate. Each K's boundary is bisected with screens, and the boundaries are
confirmed with full evaluations in storage order; a boundary that fails its full evaluation moves
up one rank. Without a screen the bisection uses full evaluations. Every setting is merged (and
refined) at most once and evaluated at most once each way.

If nothing passes, the tasks that fail at every K's largest rank (their best, by the same
assumption) are left out and stay on their original adapters, and the search runs again on the
others; if every task passes somewhere but never all at once, the task with the lowest best
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
        """The outcome with how many full evaluations and screens it took."""
        return {
            "setting": vars(self.setting) if self.setting else None,
            "decision": self.decision.to_dict() if self.decision else None,
            "excluded": self.excluded,
            "full_evaluations": sum(t["by"] == "full" for t in self.tried),
            "screens": sum(t["by"] == "screen" for t in self.tried),
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


@dataclass(frozen=True)
class Screen:
    """A cheaper look at a merge: `evaluate` on a slice of each task's eval rows and the originals'
    scores on the same slice; a task whose screened retention is below the gate by `margin` or
    more rules the setting out."""

    evaluate: Evaluate
    originals: Mapping[str, TaskScore]
    margin: float = 0.05


class Search:
    """One group's search state: merges, full decisions and screened decisions, each made once."""

    def __init__(self, kept, evaluate, originals, gate, refine, screen, merge_options, tried):
        self.kept, self.evaluate, self.originals, self.gate = kept, evaluate, originals, gate
        self.refine, self.screen, self.merge_options, self.tried = refine, screen, merge_options, tried
        self.results: dict[Setting, MergeResult] = {}
        self.full: dict[Setting, GateDecision] = {}
        self.screened: dict[Setting, GateDecision] = {}

    def result(self, setting: Setting) -> MergeResult:
        if setting not in self.results:
            result = merge_adapters(self.kept, "hydraopt", heads=setting.heads, rank=setting.rank,
                                    **self.merge_options)  # fmt: skip
            self.results[setting] = self.refine(result) if self.refine is not None else result
        return self.results[setting]

    def decide(self, setting: Setting, by: str) -> GateDecision:
        tasks = [a.task_name for a in self.kept]
        look = self if by == "full" else self.screen
        decision = self.gate.decide(
            {t: look.originals[t] for t in tasks}, look.evaluate(self.result(setting))
        )
        self.tried.append({**vars(setting), "tasks": len(tasks), "by": by, "publish": decision.publish,
                           "failing": decision.failing})  # fmt: skip
        return decision

    def passes(self, setting: Setting) -> bool:
        """The full decision when made; else whether the screen (or, without one, the full
        evaluation) leaves the setting in."""
        if setting in self.full:
            return self.full[setting].publish
        if self.screen is None:
            return self.confirmed(setting).publish
        if setting not in self.screened:
            self.screened[setting] = self.decide(setting, "screen")
        floor = self.gate.min_retention - self.screen.margin
        verdicts = self.screened[setting].verdicts.values()
        kept = all(v.passed or (v.retention is not None and v.retention >= floor) for v in verdicts)
        if not kept:
            self.results.pop(setting, None)  # never evaluated in full: its merge is not needed again
        return kept

    def confirmed(self, setting: Setting) -> GateDecision:
        if setting not in self.full:
            self.full[setting] = self.decide(setting, "full")
        if not self.full[setting].publish:
            self.results.pop(setting, None)
        return self.full[setting]

    def best_of_each_k(self, by_heads: dict[int, list[Setting]]) -> list[GateDecision]:
        """The decisions at each K's largest rank (full where made, else screened)."""
        tops = [row[-1] for row in by_heads.values()]
        for top in tops:
            self.passes(top)
        return [self.full.get(top) or self.screened[top] for top in tops]


def rows_by_heads(candidates: Sequence[Setting]) -> dict[int, list[Setting]]:
    """The settings of each K, by rank."""
    rows: dict[int, list[Setting]] = {}
    for setting in sorted(candidates, key=lambda s: s.rank):
        rows.setdefault(setting.heads, []).append(setting)
    return rows


def boundary(search: Search, row: list[Setting], below: float) -> int:
    """Index of the lowest rank of one K (`row`, by rank) that passes, by bisection among the
    settings storing less than `below`; the first at or above `below` when none of those passes."""
    low, high = -1, sum(setting.storage_ratio < below for setting in row)
    while high - low > 1:
        middle = (low + high) // 2
        if search.passes(row[middle]):
            high = middle
        else:
            low = middle
    return high


def first_passing(search: Search, candidates: list[Setting]) -> Setting | None:
    """The smallest-storage setting whose full evaluation passes (None if none does)."""
    if search.screen is None:  # in storage order: nothing is evaluated above the answer
        return next((s for s in candidates if search.confirmed(s).publish), None)
    by_heads = rows_by_heads(candidates)
    edges, below = {}, float("inf")
    for k, row in sorted(by_heads.items(), key=lambda item: item[1][0].storage_ratio):
        edges[k] = boundary(search, row, below)
        if edges[k] < len(row):
            below = min(below, row[edges[k]].storage_ratio)
    while any(edges[k] < len(row) for k, row in by_heads.items()):
        setting = min((row[edges[k]] for k, row in by_heads.items() if edges[k] < len(row)),
                      key=lambda s: (s.storage_ratio, s.heads))  # fmt: skip
        if search.confirmed(setting).publish:
            return setting
        edges[setting.heads] += 1  # it fails, and so (retention growing with r') do the ranks below
    return None


def auto_hydraopt(
    adapters: Sequence[Adapter],
    evaluate: Evaluate,
    originals: Mapping[str, TaskScore],
    *,
    gate: Gate | None = None,
    heads: Sequence[int] | None = None,
    ranks: Sequence[int] | None = None,
    refine: Refine | None = None,
    screen: Screen | None = None,
    **merge_options: Any,
) -> AutoOutcome:
    """Search (K, r') for `adapters`; `evaluate(result)` scores each task of a merge, after
    `refine(result)` (e.g. `hydraopt.refine.refine` on calibration statistics) where given;
    `screen` makes the bisection cheaper."""
    gate = gate or Gate()
    kept, excluded, tried = list(adapters), {}, []
    while kept:
        candidates = settings(kept, heads, ranks)
        if not candidates:
            excluded |= {a.task_name: "no (K, r') stores less than the original adapters" for a in kept}
            break
        search = Search(kept, evaluate, originals, gate, refine, screen, merge_options, tried)
        setting = first_passing(search, candidates)
        if setting is not None:
            return AutoOutcome(setting, search.result(setting), search.full[setting], excluded, tried)
        best: dict[str, float] = {}
        passed: set[str] = set()
        last_reason: dict[str, str] = {}
        for decision in search.best_of_each_k(rows_by_heads(candidates)):
            for task, verdict in decision.verdicts.items():
                if verdict.passed:
                    passed.add(task)
                else:
                    last_reason[task] = verdict.reason
                best[task] = max(
                    best.get(task, -1.0), verdict.retention if verdict.retention is not None else -1.0
                )
        never = [a.task_name for a in kept if a.task_name not in passed]
        for task in never:
            excluded[task] = f"fails the gate at every setting; at the largest: {last_reason[task]}"
        if not never:
            task = min(best, key=lambda t: best[t])
            excluded[task] = f"passes only where others fail (best retention {best[task]:.3f})"
        kept = [a for a in kept if a.task_name not in excluded]
    return AutoOutcome(None, None, None, excluded, tried)
