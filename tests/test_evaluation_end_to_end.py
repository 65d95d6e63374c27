"""End to end on a tiny LM: trained PEFT adapters, real merges, the gate and `auto`."""

import dataclasses

import pytest
import torch

from hydraopt import load_adapter, merge_adapters
from hydraopt.evaluation import Evaluator, Gate, Screen, auto_hydraopt, settings
from hydraopt.evaluation.function import encode_task, run_task
from hydraopt.evaluation.model import load_causal_lm
from hydraopt.evaluation.suite import Example, TaskSet
from hydraopt.factors import SharedLowRank


@pytest.fixture(scope="module")
def adapters(tiny_task_adapters, tiny_tasks):
    return [
        load_adapter(path, task=task.name) for path, task in zip(tiny_task_adapters, tiny_tasks, strict=True)
    ]


@pytest.fixture(scope="module")
def evaluator(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    evaluator = Evaluator(model, tokenizer, tiny_tasks, batch_size=8)
    evaluator.originals(adapters)
    return evaluator


def test_trained_adapters_learn_their_tasks_and_the_base_does_not(evaluator, tiny_tasks):
    for task in tiny_tasks:
        assert evaluator.original_scores[task.name].value >= 0.9
        assert evaluator.base(task.name).value == 0.0


def test_applied_update_matches_the_adapter_loaded_by_peft(tiny_lm, tiny_task_adapters, tiny_tasks, adapters):
    from peft import PeftModel

    model, tokenizer = tiny_lm
    encoded = encode_task(tokenizer, tiny_tasks[1])
    evaluator = Evaluator(model, tokenizer, tiny_tasks[1:2])
    ours = evaluator.run(tiny_tasks[1].name, adapters[1].modules)
    fresh, _ = load_causal_lm(model.name_or_path)
    peft_model = PeftModel.from_pretrained(fresh, tiny_task_adapters[1]).eval()
    theirs = run_task(peft_model, tokenizer, encoded)
    torch.testing.assert_close(ours.log_probs.float(), theirs.log_probs.float(), atol=2e-3, rtol=0)


def test_gate_refuses_a_random_merge_and_publishes_a_good_one(evaluator, adapters):
    good = merge_adapters(adapters, "hydraopt", heads=len(adapters))
    decision = Gate().decide(evaluator.original_scores, evaluator.merged(good))
    assert decision.publish, decision.to_dict()

    generator = torch.Generator().manual_seed(0)
    random_heads = {
        name: SharedLowRank(module.A, torch.randn(module.B.shape, generator=generator))
        for name, module in good.modules.items()
    }
    bad = dataclasses.replace(good, modules=random_heads)
    scores = evaluator.merged(bad)
    decision = Gate().decide(evaluator.original_scores, scores)
    assert not decision.publish
    assert decision.failing == sorted(a.task_name for a in adapters)
    assert all(score.agreement < 0.5 and score.kl > 0.1 for score in scores.values())
    assert all("retention" in verdict.reason for verdict in decision.verdicts.values())


def test_auto_picks_the_smallest_setting_that_passes(evaluator, adapters):
    gate = Gate()
    outcome = auto_hydraopt(adapters, evaluator.merged, evaluator.original_scores, gate=gate)
    exhaustive = exhaustive_choice(adapters, evaluator, gate)
    assert outcome.setting == exhaustive
    assert outcome.decision.publish and not outcome.excluded
    chosen = [t for t in outcome.tried if (t["heads"], t["rank"]) == (exhaustive.heads, exhaustive.rank)]
    assert [t["publish"] for t in chosen] == [True] and {t["by"] for t in outcome.tried} == {"full"}
    assert (
        len(outcome.tried) <= settings(adapters).index(exhaustive) + 1
    )  # never more than trying them in order
    sliced = evaluator.screening(2)  # of each task's eval rows
    screen = Screen(sliced.merged, sliced.original_scores)
    screened = auto_hydraopt(adapters, evaluator.merged, evaluator.original_scores, gate=gate, screen=screen)
    assert screened.setting == exhaustive
    assert screened.to_dict()["screens"] > 0 and screened.to_dict()["full_evaluations"] < len(outcome.tried)


def exhaustive_choice(adapters, evaluator, gate):
    """Every setting merged and evaluated in full; the smallest storage that passes."""
    passing = []
    for setting in settings(adapters):
        result = merge_adapters(adapters, "hydraopt", heads=setting.heads, rank=setting.rank)
        if gate.decide(evaluator.original_scores, evaluator.merged(result)).publish:
            passing.append(setting)
    assert passing, "no setting passes: the test would prove nothing"
    return min(passing, key=lambda s: (s.storage_ratio, s.heads))


def test_auto_leaves_out_a_task_no_setting_can_serve(tiny_lm, tiny_tasks, tiny_task_adapters, adapters):
    """A 'delta' task whose adapter never learnt it (original score 0) stays on its own adapter."""
    model, tokenizer = tiny_lm
    delta = TaskSet("delta", "exact_match", (), (Example("the small delta", "apple banana"),) * 4)
    evaluator = Evaluator(model, tokenizer, [*tiny_tasks, delta], batch_size=8)
    group = [*adapters, load_adapter(tiny_task_adapters[0], task="delta")]
    originals = evaluator.originals(group)
    assert originals["delta"].value == 0.0
    outcome = auto_hydraopt(group, evaluator.merged, originals)
    assert list(outcome.excluded) == ["delta"]
    assert "scores 0" in outcome.excluded["delta"]
    assert outcome.decision.publish and sorted(outcome.result.tasks) == sorted(t.name for t in tiny_tasks)


def test_settings_cap_heads_at_the_group_size_and_stay_below_the_sources(adapters):
    found = settings(adapters, heads=[1, 9], ranks=[2, 4, 8])
    assert {s.heads for s in found} == {1, len(adapters)}
    assert all(s.storage_ratio < 1 for s in found)
    assert [s.storage_ratio for s in found] == sorted(s.storage_ratio for s in found)
    assert (len(adapters), 8) not in {(s.heads, s.rank) for s in found}  # K=N, r'=2r: more than the sources


def test_a_screening_evaluator_scores_as_one_built_on_the_first_rows(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    evaluator = Evaluator(model, tokenizer, tiny_tasks, batch_size=8)
    evaluator.originals(adapters)
    cut = [dataclasses.replace(task, eval=task.eval[:2]) for task in tiny_tasks]
    fresh = Evaluator(model, tokenizer, cut, batch_size=8)
    assert evaluator.screening(2).original_scores == fresh.originals(adapters)
    merged = merge_adapters(adapters, "hydraopt", heads=1, rank=2)
    assert evaluator.screening(2).merged(merged) == fresh.merged(merged)
    assert all(score.examples == 2 for score in fresh.merged(merged).values())
