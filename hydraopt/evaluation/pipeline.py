"""One group's merge pipeline: closed form -> refine -> distill -> score against the originals.

`consolidate` and `hydracat bench quality` both merge through it. A HydraOpt merge goes through
the stages asked for (refinement on each task's input statistics, `hydraopt.refine`; distillation
on the originals' outputs, `hydraopt.evaluation.distillation`); other methods stay closed form.
Scores are function space (`Evaluator`: task metric, agreement, KL) for the tasks with an eval
set and weight space (1 − relative reconstruction error) for the others. Each score is computed
once per merge setting; merges are kept for reuse across stages only when asked (`keep_merges`):
a bundle of a large model is hundreds of MB.
"""

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from hydraopt.adapter import Adapter
from hydraopt.evaluation.auto import Screen
from hydraopt.evaluation.distillation import References, distill
from hydraopt.evaluation.evaluator import Evaluator
from hydraopt.evaluation.function import TaskScore
from hydraopt.merge import MergeResult, merge_adapters
from hydraopt.methods import get_method
from hydraopt.metrics import reconstruction_errors
from hydraopt.refine import InputStatistics, refine

STAGES = ("closed", "refined", "distilled")
SCREEN_ROWS = 16  # eval rows per task `auto` screens a setting on before evaluating it in full
DistillStep = Callable[[MergeResult, int, int, float], None]


def weight_space_scores(adapters: Sequence[Adapter], result: MergeResult) -> dict[str, TaskScore]:
    """Per task of `result`: 1 − the relative reconstruction error of its update (1 = exact)."""
    errors = reconstruction_errors([a for a in adapters if a.task_name in result.tasks], result)
    return {task: TaskScore(task, "weight_space", 1.0 - e["relative_error"], 0) for task, e in errors.items()}


def restricted(result: MergeResult, tasks: Sequence[str]) -> MergeResult:
    """The same merge, listing only `tasks` (for scoring a subset)."""
    return replace(result, tasks=list(tasks), assignment={t: result.assignment[t] for t in tasks})


class MergePipeline:
    """Merges and scores of one group of `adapters`.

    `evaluator` (None: weight space only) scores the tasks it has an eval set for; `statistics`
    turns refinement on (`refine_iterations` ALS iterations), `references` distillation
    (`distill_options`: `steps`, `learning_rate`, ...; `on_distill_step(result, done, steps, kl)`);
    `on_score(result)` is called before each new function-space evaluation.
    """

    def __init__(
        self,
        adapters: Sequence[Adapter],
        evaluator: Evaluator | None = None,
        *,
        device: Any = None,
        statistics: InputStatistics | None = None,
        refine_iterations: int = 8,
        references: References | None = None,
        distill_options: Mapping[str, Any] | None = None,
        on_distill_step: DistillStep | None = None,
        on_score: Callable[[MergeResult], None] | None = None,
        keep_merges: bool = False,
    ):
        self.adapters, self.evaluator, self.device = list(adapters), evaluator, device
        self.statistics, self.refine_iterations = statistics, refine_iterations
        self.references, self.distill_options = references, dict(distill_options or {})
        self.on_distill_step, self.on_score = on_distill_step, on_score
        self.stages = [s for s, on in zip(STAGES, (True, statistics, references), strict=True) if on]
        with_eval = set(evaluator.encoded) if evaluator else set()
        self.function_space = [a for a in self.adapters if a.task_name in with_eval]
        self.originals = {a.task_name: TaskScore(a.task_name, "weight_space", 1.0, 0) for a in self.adapters}
        if evaluator:
            self.originals |= evaluator.originals(self.function_space)
        self.merges: dict[tuple, MergeResult] | None = {} if keep_merges else None
        self.scores: dict[tuple, dict[str, TaskScore]] = {}

    @property
    def improves(self) -> bool:
        """Whether a HydraOpt merge goes beyond the closed form."""
        return len(self.stages) > 1

    def merge(
        self, method: str = "hydraopt", stage: str | None = None, adapters: Sequence[Adapter] | None = None,
        **params: Any,
    ) -> MergeResult:  # fmt: skip
        """`method` with `params` on `adapters` (default: all); HydraOpt up to `stage` (default: the last)."""
        adapters = list(adapters or self.adapters)
        stage = (stage or self.stages[-1]) if get_method(method).refinable else "closed"
        key = self.key(method, stage, adapters, params)
        if self.merges is not None and key in self.merges:
            return self.merges[key]
        if stage == "closed":
            result = merge_adapters(adapters, method, device=self.device, **params)
        else:
            previous = self.merge(method, self.stages[self.stages.index(stage) - 1], adapters, **params)
            result = self.refined(previous, adapters) if stage == "refined" else self.distilled(previous)
        if self.merges is not None:
            self.merges[key] = result
        return result

    def finish(self, closed: MergeResult) -> MergeResult:
        """A closed-form HydraOpt (K, r') merge taken through the remaining stages (`auto`'s refine
        callback); with `keep_merges`, stages this setting went through before are looked up."""
        members = [a for a in self.adapters if a.task_name in closed.tasks]
        params = {"heads": closed.heads, "rank": closed.rank}
        if self.merges is not None:
            self.merges.setdefault(self.key(closed.method, "closed", members, params), closed)
            return self.merge(closed.method, None, members, **params)
        result = closed
        for stage in self.stages[1:]:
            result = self.refined(result, members) if stage == "refined" else self.distilled(result)
        return result

    @staticmethod
    def key(method: str, stage: str, adapters: Sequence[Adapter], params: Mapping[str, Any]) -> tuple:
        tasks = tuple(a.task_name for a in adapters)
        return method, stage, json.dumps(params, sort_keys=True, default=str), tasks

    def refined(self, result: MergeResult, adapters: Sequence[Adapter]) -> MergeResult:
        return refine(result, adapters, self.statistics, iterations=self.refine_iterations)

    def distilled(self, result: MergeResult) -> MergeResult:
        step = self.on_distill_step
        progress = (lambda done, steps, kl: step(result, done, steps, kl)) if step else None
        model, tokenizer = self.evaluator.model, self.evaluator.tokenizer
        return distill(result, model, tokenizer, self.references, progress=progress, **self.distill_options)

    def screen(self, rows: int = SCREEN_ROWS) -> Screen | None:
        """`auto`'s screen: the tasks with an eval set scored on their first `rows` eval rows, against
        the originals on the same rows (the others in weight space, as always); None when no task
        has an eval set (weight space is cheap: nothing to screen)."""
        if not self.function_space:
            return None
        sliced = self.evaluator.screening(rows)
        originals = self.originals | {
            a.task_name: sliced.original_scores[a.task_name] for a in self.function_space
        }
        return Screen(lambda result: self.scores_on(sliced, result), originals)

    def score(self, result: MergeResult) -> dict[str, TaskScore]:
        """Every task of `result` against its original: function space where it has an eval set."""
        key = (result.method, json.dumps(result.params, sort_keys=True, default=str), tuple(result.tasks))
        if key not in self.scores:
            self.scores[key] = self.scores_on(self.evaluator, result, self.on_score)
        return self.scores[key]

    def scores_on(
        self,
        evaluator: Evaluator | None,
        result: MergeResult,
        before: Callable[[MergeResult], None] | None = None,
    ) -> dict[str, TaskScore]:
        """`result`'s tasks scored by `evaluator` where they have an eval set (`before(result)`
        first), in weight space otherwise; in the group's task order."""
        in_result = [a.task_name for a in self.function_space if a.task_name in result.tasks]
        scores = weight_space_scores([a for a in self.adapters if a.task_name not in in_result], result)
        if in_result:
            if before:
                before(result)
            scores |= evaluator.merged(restricted(result, in_result))
        return {a.task_name: scores[a.task_name] for a in self.adapters if a.task_name in scores}
