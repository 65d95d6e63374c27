"""Evaluation: every metric on hand-made cases, the gate, and the scoring path on a real tiny LM."""

import math

import pytest
import torch

from hydraopt.evaluation import EvaluationError, Gate, TaskScore, applied, retention
from hydraopt.evaluation.exact_match import greedy_path, judge, verdict_of_tokens
from hydraopt.evaluation.function import (
    EncodedTask,
    TaskOutputs,
    choice_verdicts,
    encode_task,
    mean_kl,
    task_metric,
    token_agreement,
)
from hydraopt.evaluation.suite import Example, TaskSet
from hydraopt.factors import LoraDelta


def outputs(probs: list[list[float]], targets: list[int], counts: list[int]) -> TaskOutputs:
    counts_t = torch.tensor(counts)
    return TaskOutputs(
        log_probs=torch.tensor(probs).log(),
        targets=torch.tensor(targets),
        example_of=torch.repeat_interleave(torch.arange(len(counts)), counts_t),
        first_positions=torch.cumsum(counts_t, 0) - counts_t,
        correct=torch.zeros(len(counts), dtype=torch.bool),
    )


def encoded(metric: str, counts: list[int], answers=None, choice_tokens=None) -> EncodedTask:
    return EncodedTask(
        name="t",
        metric=metric,
        sequences=[[0] * (n + 2) for n in counts],
        answer_lengths=counts,
        answers=answers or [0] * len(counts),
        choice_tokens=choice_tokens or [[] for _ in counts],
        targets=[""] * len(counts),
        stops=[()] * len(counts),
    )


# Example 0 has two answer positions, examples 1 and 2 one each.
PROBS = [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]]
TARGETS = [1, 0, 1, 2]
COUNTS = [2, 1, 1]


@pytest.mark.parametrize(
    ("text", "ended", "verdict"),
    [
        (" urgent", True, True),  # the answer, then end of sequence
        (" urgent\nTicket", False, True),  # the answer, then a stop string
        (" urgent\n", False, True),
        (" urgent", False, None),  # what follows decides
        (" urg", False, None),  # still on the way
        (" urgently", False, False),  # the answer does not stop there
        (" low", False, False),
        (" urg", True, False),  # stopped too early
        (" urgent!", True, False),
    ],
)
def test_judge_wants_the_answer_then_a_stop(text, ended, verdict):
    assert judge(text, ended, " urgent", ["\n"]) is verdict


def test_a_stop_string_may_take_several_tokens_and_none_may_stop_only_at_eos():
    assert judge(" a\nTi", False, " a", ["\nTicket:"]) is None
    assert judge(" a\nTicket: b", False, " a", ["\nTicket:"]) is True
    assert judge(" a\nTime", False, " a", ["\nTicket:"]) is False
    assert judge(" a\n", False, " a", []) is False  # no stop strings: only EOS ends the answer


def test_greedy_path_is_read_off_the_teacher_forced_argmax():
    assert greedy_path([5, 6, 7], [5, 6, 7, 2]) == [5, 6, 7, 2]  # all right: the token after the answer
    assert greedy_path([5, 6, 7], [5, 9, 7, 2]) == [5, 9]  # greedy left the answer at its second token
    words = {5: " a", 6: "b", 9: "x", 2: "<eos>"}
    decode_ids = lambda ids: "".join(words[i] for i in ids)  # noqa: E731
    assert verdict_of_tokens([5, 6, 2], frozenset({2}), decode_ids, " ab", ["\n"]) is True
    assert verdict_of_tokens([5, 9], frozenset({2}), decode_ids, " ab", ["\n"]) is False
    assert verdict_of_tokens([5], frozenset({2}), decode_ids, " ab", ["\n"]) is None


def test_exact_match_is_the_share_of_examples_judged_right():
    result = outputs(PROBS, TARGETS, COUNTS)
    assert task_metric(result) == 0.0
    right = TaskOutputs(**{**result.__dict__, "correct": torch.tensor([True, False, True])})
    assert task_metric(right) == pytest.approx(2 / 3)


def test_accuracy_compares_the_first_token_of_each_choice():
    # choices are tokens 0 and 2 for every example; first positions are rows 0, 2, 3: best choice 2, 0, 2
    task = encoded("accuracy", COUNTS, answers=[1, 0, 0], choice_tokens=[[0, 2]] * 3)
    result = outputs(PROBS, TARGETS, COUNTS)
    first = result.log_probs[result.first_positions]
    scores = [row[tokens] for row, tokens in zip(first, task.choice_tokens, strict=True)]
    assert choice_verdicts(task, scores).tolist() == [True, True, False]


def test_token_agreement_counts_positions_with_the_same_argmax():
    other = [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    reference = outputs(PROBS, TARGETS, COUNTS)
    assert token_agreement(reference, outputs(other, TARGETS, COUNTS)) == pytest.approx(3 / 4)
    assert token_agreement(reference, reference) == 1.0


def test_kl_matches_the_closed_form_and_is_zero_for_identical_runs():
    p, q = [[0.5, 0.5]], [[0.25, 0.75]]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert mean_kl(outputs(p, [0], [1]), outputs(q, [0], [1])) == pytest.approx(expected, rel=1e-5)
    assert mean_kl(outputs(p, [0], [1]), outputs(p, [0], [1])) == pytest.approx(0.0, abs=1e-7)


def score(value: float) -> TaskScore:
    return TaskScore(task="t", metric="exact_match", value=value, examples=100)


def test_retention_is_merged_over_original_and_undefined_for_a_zero_original():
    assert retention(score(0.8), score(0.78)) == pytest.approx(0.975)
    assert retention(score(0.0), score(0.5)) is None


def test_gate_publishes_only_when_every_task_keeps_enough():
    gate = Gate()
    originals = {"a": score(0.9), "b": score(0.5)}
    decision = gate.decide(originals, {"a": score(0.882), "b": score(0.5)})
    assert decision.publish and decision.failing == []
    decision = gate.decide(originals, {"a": score(0.85), "b": score(0.5)})
    assert not decision.publish and decision.failing == ["a"]
    assert "retention 0.944 < 0.97" in decision.verdicts["a"].reason


def test_gate_fails_tasks_it_cannot_judge():
    decision = Gate(0.9).decide({"a": score(0.0), "b": score(0.5)}, {"a": score(0.4), "c": score(0.3)})
    assert decision.failing == ["a", "b", "c"]
    reasons = {task: verdict.reason for task, verdict in decision.verdicts.items()}
    assert "scores 0" in reasons["a"]
    assert "not evaluated" in reasons["b"]
    assert "no evaluation of the original" in reasons["c"]
    with pytest.raises(ValueError):
        Gate(1.5)


def test_applied_adds_the_update_and_restores_the_weights_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(4, 3, bias=False))
    before = model[0].weight.detach().clone()
    delta = LoraDelta(torch.randn(2, 6), torch.randn(4, 2))
    with applied(model, {"0": delta}):
        torch.testing.assert_close(model[0].weight, before + delta.B @ delta.A)
    assert torch.equal(model[0].weight, before)
    with pytest.raises(RuntimeError), applied(model, {"0": delta}):
        raise RuntimeError("boom")
    assert torch.equal(model[0].weight, before)
    with pytest.raises(EvaluationError, match="does not fit"), applied(model, {"1": delta}):
        pass
    with pytest.raises(EvaluationError, match="no Linear module"), applied(model, {"2": delta}):
        pass


def test_accuracy_tasks_need_choices_with_distinct_first_tokens(tiny_lm):
    _, tokenizer = tiny_lm
    examples = (Example("red apple", " apple banana", (" apple banana", " apple cherry")),)
    with pytest.raises(EvaluationError, match="distinct tokens"):
        encode_task(tokenizer, TaskSet("fruit", "accuracy", (), examples))
