"""Score a merge task by task against the original adapters, on one model and one task suite."""

from collections.abc import Callable, Mapping, Sequence

from hydraopt.adapter import Adapter
from hydraopt.errors import EvaluationError
from hydraopt.evaluation.function import (
    EncodedTask,
    TaskOutputs,
    TaskScore,
    applied,
    encode_task,
    run_task,
    score,
)
from hydraopt.evaluation.suite import TaskSet
from hydraopt.factors import LoraDelta
from hydraopt.merge import MergeResult

Progress = Callable[[str], None]


class Evaluator:
    """Runs each task's eval set with an update applied to `model`.

    `originals(adapters)` runs every original adapter once and keeps its outputs as the
    reference; `merged(result)` then scores the result's task adapters with agreement and KL
    against that reference. Tasks are matched by name (`Adapter.task_name` == `TaskSet.name`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        tasks: Sequence[TaskSet],
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.encoded: dict[str, EncodedTask] = {t.name: encode_task(tokenizer, t) for t in tasks}
        self.references: dict[str, TaskOutputs] = {}
        self.original_scores: dict[str, TaskScore] = {}

    def screening(self, examples: int) -> "Evaluator":
        """The same evaluator on the first `examples` eval rows of each task, with the originals'
        outputs and scores cut to those rows (evaluate the originals first): `auto`'s screen."""
        sliced = Evaluator(self.model, self.tokenizer, [], batch_size=self.batch_size, progress=self.progress)
        sliced.encoded = {name: task.head(examples) for name, task in self.encoded.items()}
        sliced.references = {name: outputs.head(examples) for name, outputs in self.references.items()}
        sliced.original_scores = {name: score(sliced.encoded[name], outputs)
                                  for name, outputs in sliced.references.items()}  # fmt: skip
        return sliced

    def task(self, name: str) -> EncodedTask:
        if name not in self.encoded:
            raise EvaluationError(f"no eval set for task {name!r}; known: {sorted(self.encoded)}")
        return self.encoded[name]

    def run(self, task: str, deltas: Mapping[str, LoraDelta]) -> TaskOutputs:
        if self.progress:
            self.progress(task)
        with applied(self.model, deltas) as model:
            return run_task(model, self.tokenizer, self.task(task), self.batch_size)

    def base(self, task: str) -> TaskScore:
        """The base model alone on `task` (no update)."""
        return score(self.task(task), self.run(task, {}))

    def originals(self, adapters: Sequence[Adapter]) -> dict[str, TaskScore]:
        """Each original adapter on its own task; kept as the reference for `merged`."""
        for adapter in adapters:
            task = adapter.task_name
            if task not in self.references:
                self.references[task] = self.run(task, adapter.modules)
                self.original_scores[task] = score(self.task(task), self.references[task])
        return {a.task_name: self.original_scores[a.task_name] for a in adapters}

    def merged(self, result: MergeResult) -> dict[str, TaskScore]:
        """Each task's adapter from `result` (A' and its head), against the original's outputs."""
        scores = {}
        for task in result.tasks:
            if task not in self.references:
                raise EvaluationError(f"evaluate the original adapter of {task!r} first (originals())")
            deltas = {name: result.task_delta(task, name) for name in result.modules}
            scores[task] = score(self.task(task), self.run(task, deltas), self.references[task])
        return scores
