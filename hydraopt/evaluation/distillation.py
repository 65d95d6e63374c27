"""Function-space refinement of a shared-A' merge: gradient steps on KL(original ‖ merged) through the model.

`hydraopt.refine` matches each module's output on its inputs, one module at a time; errors still add
up through the layers and only some of them change an answer. Here the loss is the one the evaluation
scores: at every answer position of a task's calibration examples (train rows, never eval rows), the
KL from the model with the task's original adapter to the model with the task's head of the merge.
A' and every B' are trained jointly with Adam, every task contributing to each step (A' is shared);
the base model's weights stay frozen and unchanged. The originals' log-probabilities (`references`)
are computed once per group and serve every setting distilled, as `input_statistics` serve `refine`.
Adam moves every parameter by about the learning rate whatever the gradient's size, so a merge that is
already close could get worse: the KL over all calibration examples is measured before and after, and
the input is returned unchanged (params say so) unless the steps lowered it.
"""

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from hydraopt.adapter import Adapter
from hydraopt.errors import EvaluationError
from hydraopt.evaluation.function import (
    answer_logits,
    applied,
    calibration_examples,
    padding_id,
    task_of_each,
)
from hydraopt.evaluation.suite import TaskSet
from hydraopt.factors import SharedLowRank
from hydraopt.merge import MergeResult


@dataclasses.dataclass(frozen=True)
class Calibration:
    """One task's calibration examples as token ids, and the original adapter's log-probabilities at
    their answer positions (one [answer tokens, vocab] tensor per example)."""

    task: str
    sequences: list[list[int]]
    answer_lengths: list[int]
    reference: list[torch.Tensor]


@dataclasses.dataclass(frozen=True)
class References:
    """Per task, its `Calibration` on (at most) its first `examples` train examples."""

    examples: int
    tasks: dict[str, Calibration]


def references(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[TaskSet],
    adapters: Sequence[Adapter],
    *,
    examples: int = 64,
    batch_size: int = 16,
    progress: Callable[[str], None] | None = None,
) -> References:
    """The `Calibration` of every adapter's task (matched by name)."""
    if examples < 1:
        raise ValueError(f"examples must be positive; got {examples}")
    calibrations = {}
    for adapter, task in zip(adapters, task_of_each(tasks, adapters), strict=True):
        if progress:
            progress(task.name)
        calibrations[task.name] = calibrate(model, tokenizer, task, adapter.modules, examples, batch_size)
    return References(examples, calibrations)


def distill(
    result: MergeResult,
    model: torch.nn.Module,
    tokenizer,
    reference: References,
    *,
    steps: int = 16,
    batch_size: int = 16,
    learning_rate: float = 3e-5,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> MergeResult:
    """`result` with A' and B' trained for `steps` Adam steps on the mean per-task KL(original ‖ merged)
    over the answer positions of each merged task's calibration examples (`reference` may cover more
    tasks than the merge)."""
    if result.method != "hydraopt":
        raise ValueError(f"only hydraopt results can be distilled, not {result.method!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps}, {batch_size}")
    missing = sorted(t for t in result.tasks if t not in reference.tasks)
    if missing:
        raise EvaluationError(f"distill needs every merged task's references; missing {missing}")
    calibrations = [reference.tasks[t] for t in result.tasks]
    device = model.get_output_embeddings().weight.device
    shared = {n: trainable(m.A, device) for n, m in result.modules.items()}
    heads = {n: trainable(m.B, device) for n, m in result.modules.items()}
    optimizer = torch.optim.Adam([*shared.values(), *heads.values()], lr=learning_rate)
    pad_id = padding_id(tokenizer)
    rng = random.Random(seed)
    orders = {c.task: cycle(len(c.sequences), rng) for c in calibrations}
    with frozen(model), low_rank_updates(model, shared, heads) as select_head:
        before = calibration_kl(model, calibrations, result.assignment, select_head, batch_size, pad_id)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for calibration in calibrations:
                select_head(result.assignment[calibration.task])
                order = orders[calibration.task]
                batch = [next(order) for _ in range(min(batch_size, len(calibration.sequences)))]
                loss = batch_kl(model, calibration, batch, pad_id) / len(calibrations)
                loss.backward()
                total += loss.item()
            optimizer.step()
            if progress:
                progress(step + 1, steps, total)
        after = calibration_kl(model, calibrations, result.assignment, select_head, batch_size, pad_id)
    record = {"examples": reference.examples, "steps": steps, "batch_size": batch_size,
              "learning_rate": learning_rate, "kl_before": before, "kl_after": after,
              "kept": after < before}  # fmt: skip
    if after >= before:
        return dataclasses.replace(result, params={**result.params, "distill": record})
    modules = {
        n: SharedLowRank(shared[n].detach().cpu().to(m.A.dtype), heads[n].detach().cpu().to(m.B.dtype))
        for n, m in result.modules.items()
    }
    return dataclasses.replace(result, params={**result.params, "distill": record}, modules=modules)


@torch.no_grad()
def calibrate(
    model, tokenizer, task: TaskSet, deltas: Mapping, examples: int, batch_size: int
) -> Calibration:
    """`task`'s first `examples` train examples and the original adapter's answer log-probabilities."""
    encoded = calibration_examples(tokenizer, task, examples)
    sequences, lengths = [ids for ids, _ in encoded], [n for _, n in encoded]
    pad_id = padding_id(tokenizer)
    reference: list[torch.Tensor] = []
    with applied(model, deltas):
        for start in range(0, len(sequences), batch_size):
            part = slice(start, start + batch_size)
            logits, _ = answer_logits(model, sequences[part], lengths[part], pad_id)
            reference += torch.log_softmax(logits.float(), dim=-1).split(lengths[part])
    return Calibration(task.name, sequences, lengths, reference)


@torch.no_grad()
def calibration_kl(model, calibrations: Sequence[Calibration], assignment: Mapping[str, int],
                   select_head: Callable[[int], None], batch_size: int, pad_id: int) -> float:  # fmt: skip
    """Mean over tasks of the mean KL over all their calibration examples' answer positions."""
    total = 0.0
    for calibration in calibrations:
        select_head(assignment[calibration.task])
        size = len(calibration.sequences)
        for start in range(0, size, batch_size):
            batch = range(start, min(start + batch_size, size))
            share = sum(calibration.answer_lengths[i] for i in batch) / sum(calibration.answer_lengths)
            total += batch_kl(model, calibration, batch, pad_id).item() * share
    return total / len(calibrations)


def batch_kl(model, calibration: Calibration, batch: Sequence[int], pad_id: int) -> torch.Tensor:
    """Mean over the batch's answer positions of KL(original ‖ current model)."""
    lengths = [calibration.answer_lengths[i] for i in batch]
    logits, _ = answer_logits(model, [calibration.sequences[i] for i in batch], lengths, pad_id)
    log_q = torch.log_softmax(logits.float(), dim=-1)
    log_p = torch.cat([calibration.reference[i] for i in batch])
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def trainable(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.detach().to(device, torch.float32).clone().requires_grad_()


def cycle(size: int, rng: random.Random) -> Iterator[int]:
    """Example indices forever, each pass in a fresh shuffled order."""
    while True:
        order = list(range(size))
        rng.shuffle(order)
        yield from order


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No gradients for the model's own parameters; their flags come back on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def low_rank_updates(
    model: torch.nn.Module, shared: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor]
):
    """Forward hooks adding x A'ᵀ B'_kᵀ to each named Linear's output; yields a function that picks k."""
    current = {"head": 0}

    def hook(name: str):
        def add_update(_module, inputs, output):
            return output + (inputs[0] @ shared[name].T) @ heads[name][current["head"]].T

        return add_update

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in shared]
    try:
        yield lambda k: current.update(head=k)
    finally:
        for handle in handles:
            handle.remove()
