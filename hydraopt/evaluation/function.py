"""Function-space evaluation: a causal LM with an adapter's update applied, scored on a task's examples.

Every example is scored teacher-forced in one forward pass: the answer is `" " + answer` followed by
the end-of-sequence token, and only the answer positions reach the output head.

- exact_match: every answer token is the argmax at its position, which is exactly what greedy
  decoding would produce, stop token included.
- accuracy: among the task's choices, the one whose first token scores highest is the answer.
- token agreement and KL(original ‖ merged) compare two runs position by position.

The model is duck-typed: a Hugging Face causal LM (`get_decoder()`, `get_output_embeddings()`)
and its tokenizer (`encode(text, add_special_tokens=False)`, `eos_token_id`, `pad_token_id`).
Updates are applied by adding ΔW = B·A to the named Linear weights and restored exactly afterwards.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from hydraopt.adapter import Adapter
from hydraopt.errors import HydraoptError
from hydraopt.evaluation.suite import Example, TaskSet
from hydraopt.factors import LoraDelta

PROMPT_TEMPLATE = "Question: {prompt}\nAnswer:"


class EvaluationError(HydraoptError):
    """A task or model that cannot be evaluated as asked."""


@dataclass(frozen=True)
class EncodedTask:
    """Token ids of a task's examples, ready for teacher-forced scoring."""

    name: str
    metric: str
    sequences: list[list[int]]
    answer_lengths: list[int]
    answers: list[int]  # accuracy: index of the right choice; exact_match: unused (0)
    choice_tokens: list[int]  # accuracy: first token of each choice


@dataclass(frozen=True)
class TaskOutputs:
    """Log-probabilities at every answer position of every example (one run)."""

    log_probs: torch.Tensor  # [positions, vocab], float16 to keep references small
    targets: torch.Tensor  # [positions] the answer tokens
    example_of: torch.Tensor  # [positions] example index of each position
    first_positions: torch.Tensor  # [examples] the row of each example's first answer token


@dataclass(frozen=True)
class TaskScore:
    """One run on one task; agreement and KL are against the reference run (None for the reference)."""

    task: str
    metric: str
    value: float
    examples: int
    agreement: float | None = None
    kl: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def format_prompt(prompt: str) -> str:
    return PROMPT_TEMPLATE.format(prompt=prompt)


def encode_example(tokenizer, example: Example) -> tuple[list[int], int]:
    """(prompt + answer + eos token ids, number of answer tokens)."""
    prompt = tokenizer.encode(format_prompt(example.prompt), add_special_tokens=False)
    answer = tokenizer.encode(" " + example.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + answer, len(answer)


def calibration_examples(tokenizer, task: TaskSet, examples: int) -> list[tuple[list[int], int]]:
    """`encode_example` of `task`'s first `examples` train examples (its calibration rows)."""
    chosen = task.train[:examples]
    if not chosen:
        raise EvaluationError(f"task {task.name!r} has no train examples to calibrate on")
    return [encode_example(tokenizer, example) for example in chosen]


def task_of_each(tasks: Sequence[TaskSet], adapters: Sequence[Adapter]) -> list[TaskSet]:
    """The task (matched by name) whose calibration rows serve each adapter, in the adapters' order."""
    by_name = {t.name: t for t in tasks}
    missing = sorted(a.task_name for a in adapters if a.task_name not in by_name)
    if missing:
        raise EvaluationError(f"no calibration examples for task(s) {missing}")
    return [by_name[a.task_name] for a in adapters]


def padding_id(tokenizer) -> int:
    """The pad token, or the end-of-sequence token where the tokenizer has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_task(tokenizer, task: TaskSet, split: str = "eval") -> EncodedTask:
    examples: Sequence[Example] = task.eval if split == "eval" else task.train
    if not examples:
        raise EvaluationError(f"task {task.name!r} has no {split} examples")
    encoded = [encode_example(tokenizer, example) for example in examples]
    answers, choice_tokens = [0] * len(examples), []
    if task.metric == "accuracy":
        choices = examples[0].choices
        choice_tokens = [tokenizer.encode(" " + c, add_special_tokens=False)[0] for c in choices]
        if len(set(choice_tokens)) != len(choices):
            raise EvaluationError(f"task {task.name!r}: choices {choices} do not start with distinct tokens")
        answers = [choices.index(example.answer) for example in examples]
    return EncodedTask(
        name=task.name,
        metric=task.metric,
        sequences=[ids for ids, _ in encoded],
        answer_lengths=[n for _, n in encoded],
        answers=answers,
        choice_tokens=choice_tokens,
    )


def batches(encoded: EncodedTask, batch_size: int) -> Iterator[list[int]]:
    """Example indices, longest first, so padding stays small."""
    order = sorted(range(len(encoded.sequences)), key=lambda i: -len(encoded.sequences[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def answer_logits(model, sequences: Sequence[list[int]], answer_lengths: Sequence[int], pad_id: int):
    """Logits predicting each answer token ([positions, vocab]) and those tokens, in example order."""
    device = model.get_output_embeddings().weight.device
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    rows, cols = [], []
    for i, (sequence, n) in enumerate(zip(sequences, answer_lengths, strict=True)):
        ids[i, : len(sequence)] = torch.tensor(sequence)
        mask[i, : len(sequence)] = 1
        rows += [i] * n
        cols += range(len(sequence) - n - 1, len(sequence) - 1)  # position t predicts token t + 1
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    logits = model.get_output_embeddings()(hidden[rows_t, cols_t])
    return logits, ids.to(device)[rows_t, cols_t + 1]


@torch.no_grad()
def run_task(model, tokenizer, encoded: EncodedTask, batch_size: int = 32) -> TaskOutputs:
    """Teacher-forced log-probabilities at the answer positions, examples in their original order."""
    pad_id = padding_id(tokenizer)
    per_example: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for indices in batches(encoded, batch_size):
        lengths = [encoded.answer_lengths[i] for i in indices]
        logits, targets = answer_logits(model, [encoded.sequences[i] for i in indices], lengths, pad_id)
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for i, chunk, target in zip(
            indices, log_probs.split(lengths), targets.cpu().split(lengths), strict=True
        ):
            per_example[i] = (chunk.half(), target)
    ordered = [per_example[i] for i in range(len(encoded.sequences))]
    counts = torch.tensor([len(target) for _, target in ordered])
    return TaskOutputs(
        log_probs=torch.cat([lp for lp, _ in ordered]),
        targets=torch.cat([target for _, target in ordered]),
        example_of=torch.repeat_interleave(torch.arange(len(ordered)), counts),
        first_positions=torch.cumsum(counts, 0) - counts,
    )


def task_metric(encoded: EncodedTask, outputs: TaskOutputs) -> float:
    """Exact match (greedy answer == answer) or accuracy (best-scoring choice == answer)."""
    if encoded.metric == "accuracy":
        first = outputs.log_probs[outputs.first_positions][:, encoded.choice_tokens].float()
        return (first.argmax(-1) == torch.tensor(encoded.answers)).float().mean().item()
    wrong = (outputs.log_probs.argmax(-1) != outputs.targets).float()
    wrong_per_example = torch.zeros(len(encoded.sequences)).index_add_(0, outputs.example_of, wrong)
    return (wrong_per_example == 0).float().mean().item()


def token_agreement(reference: TaskOutputs, outputs: TaskOutputs) -> float:
    """Share of answer positions where both runs put the argmax on the same token."""
    return (reference.log_probs.argmax(-1) == outputs.log_probs.argmax(-1)).float().mean().item()


def mean_kl(reference: TaskOutputs, outputs: TaskOutputs) -> float:
    """Mean over answer positions of KL(reference ‖ outputs), in nats."""
    p_log, q_log = reference.log_probs.float(), outputs.log_probs.float()
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp_min(0).mean().item()


def score(encoded: EncodedTask, outputs: TaskOutputs, reference: TaskOutputs | None = None) -> TaskScore:
    return TaskScore(
        task=encoded.name,
        metric=encoded.metric,
        value=task_metric(encoded, outputs),
        examples=len(encoded.sequences),
        agreement=token_agreement(reference, outputs) if reference is not None else None,
        kl=mean_kl(reference, outputs) if reference is not None else None,
    )


@contextmanager
@torch.no_grad()
def applied(model: torch.nn.Module, deltas: Mapping[str, LoraDelta]) -> Iterator[torch.nn.Module]:
    """`model` with W += B·A on every named module; the original weights come back on exit."""
    saved: dict[str, torch.Tensor] = {}
    try:
        for name, delta in deltas.items():
            try:
                weight = model.get_submodule(name).weight
            except AttributeError as exc:
                raise EvaluationError(f"the model has no Linear module {name!r}") from exc
            if tuple(weight.shape) != delta.shape:
                raise EvaluationError(f"{name}: update {delta.shape} does not fit {tuple(weight.shape)}")
            saved[name] = weight.detach().clone()
            weight += (delta.B.to(weight) @ delta.A.to(weight)).to(weight.dtype)
        yield model
    finally:
        for name, original in saved.items():
            model.get_submodule(name).weight.copy_(original)
