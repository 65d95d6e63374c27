"""Evaluation of merges: task suites, function-space scores, the publish gate and `auto` search.

Weight-space metrics (relative reconstruction error) live in `hydraopt.metrics`.
"""

from hydraopt.errors import EvaluationError
from hydraopt.evaluation.auto import AutoOutcome, Screen, Setting, auto_hydraopt, settings
from hydraopt.evaluation.evaluator import Evaluator
from hydraopt.evaluation.function import TaskScore, applied, encode_task, run_task, score
from hydraopt.evaluation.gate import Gate, GateDecision, TaskVerdict, retention
from hydraopt.evaluation.suite import Example, TaskSet, builtin_suite, read_suite, write_suite

__all__ = [
    "AutoOutcome",
    "EvaluationError",
    "Evaluator",
    "Example",
    "Gate",
    "GateDecision",
    "Screen",
    "Setting",
    "TaskScore",
    "TaskSet",
    "TaskVerdict",
    "applied",
    "auto_hydraopt",
    "builtin_suite",
    "encode_task",
    "read_suite",
    "retention",
    "run_task",
    "score",
    "settings",
    "write_suite",
]
