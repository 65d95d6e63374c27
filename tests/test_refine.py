"""Data-aware refinement: the ALS maths on hand-made statistics, and input statistics on a real tiny LM."""

import pytest
import torch

from hydraopt import load_adapter, merge_adapters
from hydraopt.adapter import Adapter
from hydraopt.evaluation import Evaluator, auto_hydraopt
from hydraopt.evaluation.activations import input_grams, input_statistics
from hydraopt.factors import LoraDelta
from hydraopt.refine import InputStatistics, data_aware_loss, refine, regularised, span_bases

MODULES = {"m.q": (12, 16), "m.v": (6, 16)}  # name -> (d_out, d_in)


def random_adapters(n: int = 4, rank: int = 3, seed: int = 0) -> list[Adapter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        Adapter(
            name=f"task-{i}",
            base_model="toy",
            revision=None,
            adapter_type="lora",
            dtype=torch.float32,
            sha256=f"{i:064x}",
            config={},
            modules={
                name: LoraDelta(torch.randn(rank, d_in, generator=generator),
                                torch.randn(d_out, rank, generator=generator))  # fmt: skip
                for name, (d_out, d_in) in MODULES.items()
            },
        )
        for i in range(n)
    ]


def raw_inputs(adapters: list[Adapter], seed: int = 1) -> dict:
    """task -> module -> E[x xᵀ] over d_in: a few strong, task-specific directions, like real activations."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for adapter in adapters:
        inputs[adapter.task_name] = {}
        for name, (_, d_in) in MODULES.items():
            scales = torch.logspace(1, -2, d_in, dtype=torch.float64)
            x = torch.randn(200, d_in, generator=generator, dtype=torch.float64)
            x *= scales[torch.randperm(d_in, generator=generator)]
            inputs[adapter.task_name][name] = x.T @ x / 200
    return inputs


def statistics_for(adapters: list[Adapter], inputs: dict) -> InputStatistics:
    bases = span_bases(adapters)
    grams = {t: {n: bases[n].T @ c @ bases[n] for n, c in modules.items()} for t, modules in inputs.items()}
    return InputStatistics(bases, grams)


def total_loss(result, adapters, statistics: InputStatistics, ridge: float) -> float:
    total = 0.0
    for name, basis in span_bases(adapters).items():
        targets = [a.modules[name].B.double() @ (a.modules[name].A.double() @ basis) for a in adapters]
        grams = [regularised(statistics.in_basis(a.task_name, name, basis), ridge) for a in adapters]
        heads = [result.assignment[a.task_name] for a in adapters]
        total += data_aware_loss(result.modules[name], basis, targets, grams, heads)
    return total


@pytest.mark.parametrize("heads", [4, 2, 1])
def test_refinement_lowers_the_data_aware_loss_and_never_raises_it(heads):
    adapters = random_adapters()
    stats = statistics_for(adapters, raw_inputs(adapters))
    closed = merge_adapters(adapters, "hydraopt", heads=heads, rank=3)
    losses = [total_loss(closed, adapters, stats, 0.01)]
    for iterations in (1, 2, 8):
        refined = refine(closed, adapters, stats, iterations=iterations)
        losses.append(total_loss(refined, adapters, stats, 0.01))
    assert all(b <= a * (1 + 1e-9) for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_with_isotropic_inputs_the_closed_form_is_already_optimal():
    adapters = random_adapters()
    eye = {name: torch.eye(d_in, dtype=torch.float64) for name, (_, d_in) in MODULES.items()}
    identity = statistics_for(adapters, {a.task_name: eye for a in adapters})
    closed = merge_adapters(adapters, "hydraopt", heads=4, rank=3)
    refined = refine(closed, adapters, identity, iterations=4)
    before, after = total_loss(closed, adapters, identity, 0.0), total_loss(refined, adapters, identity, 0.0)
    assert after == pytest.approx(before, rel=1e-6)
    assert refined.params["refine"] == {"iterations": 4, "ridge": 0.01}


def test_refinement_keeps_an_exact_merge_exact():
    adapters = random_adapters()
    exact = merge_adapters(adapters, "hydraopt", heads=4, rank=12)  # r' = Σ r_i
    refined = refine(exact, adapters, statistics_for(adapters, raw_inputs(adapters)), iterations=2)
    for adapter in adapters:
        for name, module in refined.modules.items():
            delta = module.head(refined.assignment[adapter.task_name])
            torch.testing.assert_close(delta.dense(), adapter.modules[name].dense(), atol=1e-4, rtol=1e-4)


def test_statistics_of_a_larger_group_serve_any_subset_exactly():
    adapters = random_adapters()
    inputs = raw_inputs(adapters)
    everything, subset = statistics_for(adapters, inputs), statistics_for(adapters[:2], inputs)
    for name, basis in subset.bases.items():
        torch.testing.assert_close(everything.in_basis("task-1", name, basis), subset.grams["task-1"][name])
    closed = merge_adapters(adapters[:2], "hydraopt", heads=1, rank=2)
    for module_a, module_b in zip(refine(closed, adapters, everything).modules.values(),
                                  refine(closed, adapters, subset).modules.values()):  # fmt: skip
        torch.testing.assert_close(module_a.B @ module_a.A, module_b.B @ module_b.A, atol=1e-4, rtol=1e-4)


def test_refine_refuses_missing_statistics_foreign_statistics_and_other_methods():
    adapters = random_adapters()
    stats = statistics_for(adapters, raw_inputs(adapters))
    closed = merge_adapters(adapters, "hydraopt", heads=4, rank=3)
    partial = InputStatistics(stats.bases, {k: v for k, v in stats.grams.items() if k != "task-3"})
    with pytest.raises(ValueError, match="task-3"):
        refine(closed, adapters, partial)
    with pytest.raises(ValueError, match="only hydraopt"):
        refine(merge_adapters(adapters, "task_arithmetic"), adapters, stats)
    others = random_adapters(seed=7)
    with pytest.raises(ValueError, match="not those the input statistics were collected for"):
        refine(merge_adapters(others, "hydraopt", heads=4, rank=3), others, stats)


@pytest.fixture(scope="module")
def adapters(tiny_task_adapters, tiny_tasks):
    return [load_adapter(p, task=t.name) for p, t in zip(tiny_task_adapters, tiny_tasks, strict=True)]


def test_input_statistics_are_the_normalised_embeddings_at_the_first_layer(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    name = next(n for n in sorted(adapters[0].modules) if ".0." in n and n.endswith("q_proj"))
    width = model.get_submodule(name).in_features
    identity = torch.eye(width, dtype=torch.float64)
    grams = input_grams(model, tokenizer, tiny_tasks[0], adapters[0].modules, {name: identity}, examples=5)
    from hydraopt.evaluation.function import encode_example

    hidden = []
    with torch.no_grad():
        for example in tiny_tasks[0].train[:5]:
            ids = torch.tensor([encode_example(tokenizer, example)[0]])
            layer = model.get_decoder().layers[0]
            hidden.append(layer.input_layernorm(model.get_decoder().embed_tokens(ids))[0].double())
    x = torch.cat(hidden)
    torch.testing.assert_close(grams[name], x.T @ x / x.shape[0], atol=1e-5, rtol=1e-4)


def test_refined_merge_tracks_the_originals_more_closely_on_a_real_model(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    stats = input_statistics(model, tokenizer, tiny_tasks, adapters)
    evaluator = Evaluator(model, tokenizer, tiny_tasks, batch_size=8)
    evaluator.originals(adapters)
    closed = merge_adapters(adapters, "hydraopt", heads=len(adapters), rank=1)
    refined = refine(closed, adapters, stats)
    kl_closed = sum(s.kl for s in evaluator.merged(closed).values())
    kl_refined = sum(s.kl for s in evaluator.merged(refined).values())
    assert kl_refined < kl_closed, (kl_refined, kl_closed)


def test_auto_evaluates_refined_merges_when_asked(tiny_lm, tiny_tasks, adapters):
    model, tokenizer = tiny_lm
    stats = input_statistics(model, tokenizer, tiny_tasks, adapters, examples=8)
    evaluator = Evaluator(model, tokenizer, tiny_tasks, batch_size=8)
    originals = evaluator.originals(adapters)
    evaluated = []

    def evaluate(result):
        evaluated.append(result.params.get("refine"))
        return evaluator.merged(result)

    outcome = auto_hydraopt(adapters, evaluate, originals, refine=lambda r: refine(r, adapters, stats))
    assert outcome.result is not None and outcome.result.params["refine"] == {"iterations": 8, "ridge": 0.01}
    assert len(evaluated) == len(outcome.tried) and all(evaluated)
