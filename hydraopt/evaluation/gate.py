"""The publish gate: every member task must keep enough of its original adapter's score."""

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from hydraopt.evaluation.function import TaskScore

DEFAULT_MIN_RETENTION = 0.97


@dataclass(frozen=True)
class TaskVerdict:
    task: str
    passed: bool
    retention: float | None
    reason: str


@dataclass(frozen=True)
class GateDecision:
    """Publish or not, with one verdict per task."""

    publish: bool
    min_retention: float
    verdicts: dict[str, TaskVerdict]

    @property
    def failing(self) -> list[str]:
        return [task for task, verdict in self.verdicts.items() if not verdict.passed]

    def to_dict(self) -> dict:
        return {
            "publish": self.publish,
            "min_retention": self.min_retention,
            "failing": self.failing,
            "tasks": {task: asdict(verdict) for task, verdict in self.verdicts.items()},
        }


def retention(original: TaskScore, merged: TaskScore) -> float | None:
    """merged / original task metric; None when the original scores 0 (nothing to retain)."""
    return merged.value / original.value if original.value > 0 else None


@dataclass(frozen=True)
class Gate:
    """Publish only if every task's retention is at least `min_retention`."""

    min_retention: float = DEFAULT_MIN_RETENTION

    def __post_init__(self) -> None:
        if not 0 < self.min_retention <= 1:
            raise ValueError(f"min_retention must be in (0, 1], got {self.min_retention}")

    def verdict(self, task: str, original: TaskScore | None, merged: TaskScore | None) -> TaskVerdict:
        if original is None:
            return TaskVerdict(task, False, None, "no evaluation of the original adapter")
        if merged is None:
            return TaskVerdict(task, False, None, "the merged adapter was not evaluated")
        kept = retention(original, merged)
        scores = f"{merged.metric} {merged.value:.3f} vs original {original.value:.3f}"
        if kept is None:
            return TaskVerdict(task, False, None, f"the original scores 0 ({scores}): nothing to retain")
        if kept < self.min_retention:
            return TaskVerdict(task, False, kept, f"retention {kept:.3f} < {self.min_retention:g} ({scores})")
        return TaskVerdict(task, True, kept, f"retention {kept:.3f} ({scores})")

    def decide(self, originals: Mapping[str, TaskScore], merged: Mapping[str, TaskScore]) -> GateDecision:
        """One verdict per task of either side; publish only when all pass."""
        tasks = sorted(set(originals) | set(merged))
        verdicts = {task: self.verdict(task, originals.get(task), merged.get(task)) for task in tasks}
        publish = bool(verdicts) and all(v.passed for v in verdicts.values())
        return GateDecision(publish=publish, min_retention=self.min_retention, verdicts=verdicts)
