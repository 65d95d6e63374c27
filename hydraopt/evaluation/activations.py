"""Input statistics for data-aware refinement (`hydraopt.refine`): per module and task, Qᵀ E[x xᵀ] Q
over the task's calibration tokens, with the task's own update applied (the inputs its merged update
must serve)."""

from collections.abc import Callable, Mapping, Sequence

import torch

from hydraopt.adapter import Adapter
from hydraopt.evaluation.function import applied, calibration_examples, task_of_each
from hydraopt.evaluation.suite import TaskSet
from hydraopt.factors import LoraDelta
from hydraopt.refine import InputStatistics, span_bases


def input_statistics(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[TaskSet],
    adapters: Sequence[Adapter],
    *,
    examples: int = 64,
    batch_size: int = 16,
    progress: Callable[[str], None] | None = None,
) -> InputStatistics:
    """Statistics of every adapter's task (matched by name) on its first `examples` train examples."""
    bases = span_bases(adapters)
    grams = {}
    for adapter, task in zip(adapters, task_of_each(tasks, adapters), strict=True):
        if progress:
            progress(task.name)
        grams[task.name] = input_grams(model, tokenizer, task, adapter.modules, bases, examples=examples,
                                       batch_size=batch_size)  # fmt: skip
    return InputStatistics(bases, grams)


@torch.no_grad()
def input_grams(
    model: torch.nn.Module,
    tokenizer,
    task: TaskSet,
    deltas: Mapping[str, LoraDelta],
    bases: Mapping[str, torch.Tensor],
    *,
    examples: int = 64,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Per module of `bases` (d_in×R), the R×R mean of (xQ)ᵀ(xQ) over every non-padding token of the
    first `examples` train examples (prompt, answer and stop token, as evaluation scores them)."""
    sequences = [ids for ids, _ in calibration_examples(tokenizer, task, examples)]
    device = model.get_output_embeddings().weight.device
    sums = {name: torch.zeros(b.shape[1], b.shape[1], dtype=torch.float64) for name, b in bases.items()}
    projections = {name: b.to(device, torch.float32) for name, b in bases.items()}
    tokens = {"mask": None, "count": 0}

    def hook(name: str):
        def accumulate(_module, inputs, _output) -> None:
            x = inputs[0][tokens["mask"]].float() @ projections[name]
            sums[name] += (x.T @ x).double().cpu()

        return accumulate

    handles = []
    try:
        for name in bases:
            handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
        with applied(model, deltas):
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start : start + batch_size]
                width = max(len(s) for s in batch)
                ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.bool)
                for i, sequence in enumerate(batch):
                    ids[i, : len(sequence)] = torch.tensor(sequence)
                    mask[i, : len(sequence)] = True
                tokens["mask"] = mask.to(device)
                tokens["count"] += int(mask.sum())
                model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.long().to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / tokens["count"] for name, total in sums.items()}
