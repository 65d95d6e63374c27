"""Function-space refinement (`hydraopt.evaluation.distillation`) on the tiny LM and its trained adapters."""

import pytest
import torch

from hydraopt import load_adapter, merge_adapters
from hydraopt.evaluation import EvaluationError, Evaluator
from hydraopt.evaluation.distillation import distill, references


@pytest.fixture(scope="module")
def adapters(tiny_task_adapters, tiny_tasks):
    return [
        load_adapter(path, task=task.name) for path, task in zip(tiny_task_adapters, tiny_tasks, strict=True)
    ]


def test_distilling_a_rank_one_merge_brings_every_task_closer_to_its_original(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    weights = {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}
    closed = merge_adapters(adapters, "hydraopt", heads=len(adapters), rank=1)
    losses = []
    reference = references(model, tokenizer, tiny_tasks, adapters, examples=16, batch_size=8)
    distilled = distill(closed, model, tokenizer, reference, steps=12, batch_size=8, learning_rate=3e-3,
                        progress=lambda step, steps, loss: losses.append(loss))  # fmt: skip
    record = distilled.params["distill"]
    assert record["kept"] and record["kl_after"] < 0.5 * record["kl_before"], record
    assert len(losses) == 12 and losses[-1] < losses[0]
    evaluator = Evaluator(model, tokenizer, tiny_tasks, batch_size=8)
    evaluator.originals(adapters)
    before, after = evaluator.merged(closed), evaluator.merged(distilled)
    assert all(after[t].kl < before[t].kl for t in before), (before, after)  # eval rows were never seen
    assert (distilled.heads, distilled.rank) == (closed.heads, closed.rank)
    assert all(m.A.dtype == closed.modules[n].A.dtype for n, m in distilled.modules.items())
    for name, p in model.named_parameters():  # the base model is left as it was
        assert torch.equal(p, weights[name][0]) and p.requires_grad == weights[name][1], name
    assert not any(m._forward_hooks for m in model.modules())


def test_a_merge_that_steps_cannot_improve_comes_back_unchanged(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    exact = merge_adapters(adapters, "hydraopt", heads=len(adapters), rank=sum(a.max_rank for a in adapters))
    reference = references(model, tokenizer, tiny_tasks, adapters, examples=8)
    distilled = distill(exact, model, tokenizer, reference, steps=2, batch_size=8, learning_rate=1e-2)
    record = distilled.params["distill"]
    assert not record["kept"] and record["kl_after"] >= record["kl_before"], record
    assert all(distilled.modules[n] is m for n, m in exact.modules.items())


def test_distill_refuses_other_methods_missing_tasks_and_bad_settings(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    merged = merge_adapters(adapters, "hydraopt", heads=1, rank=2)
    reference = references(model, tokenizer, tiny_tasks, adapters, examples=4)
    with pytest.raises(ValueError, match="only hydraopt"):
        distill(merge_adapters(adapters, "task_arithmetic"), model, tokenizer, reference)
    with pytest.raises(EvaluationError, match=tiny_tasks[2].name):
        references(model, tokenizer, tiny_tasks[:2], adapters)
    with pytest.raises(EvaluationError, match=tiny_tasks[2].name):
        distill(merged, model, tokenizer, references(model, tokenizer, tiny_tasks[:2], adapters[:2]))
    with pytest.raises(ValueError, match="positive"):
        distill(merged, model, tokenizer, reference, steps=0)
    with pytest.raises(ValueError, match="positive"):
        references(model, tokenizer, tiny_tasks, adapters, examples=0)
