"""Function-space evaluation: a causal LM with an adapter's update applied, scored on a task's examples.

Rows are encoded verbatim (`hydraopt.evaluation.encoding`): the prompt, or the chat template's
rendering of the messages, then the exact answer, tokenised once. Every example is scored
teacher-forced in one forward pass, at each answer position and at the one after the answer (what
the model does once the answer is complete); only those positions reach the output head.

- exact_match: the greedy continuation is the answer and then stops, at an end-of-sequence token
  or one of the row's stop strings (`hydraopt.evaluation.exact_match`).
- accuracy: among the row's choices, the one whose first token scores highest is the answer.
- token agreement and KL(original ‖ merged) compare two runs position by position.

The model is duck-typed: a Hugging Face causal LM (`get_decoder()`, `get_output_embeddings()`)
and its fast tokenizer (`__call__` with offsets, `decode`, `eos_token_id`, `pad_token_id`, and
`apply_chat_template` for chat rows). Updates are applied by adding ΔW = B·A to the named Linear
weights and restored exactly afterwards.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace

import torch

from hydraopt.adapter import Adapter
from hydraopt.errors import EvaluationError
from hydraopt.evaluation.encoding import encode_row, leading_special_tokens
from hydraopt.evaluation.exact_match import DEFAULT_STOPS, decode, exact_match, stop_token_ids
from hydraopt.evaluation.suite import Example, TaskSet
from hydraopt.factors import LoraDelta


@dataclass(frozen=True)
class EncodedTask:
    """Token ids of a task's examples, ready for teacher-forced scoring.

    Each sequence is context + answer + one closing token (end-of-sequence: the target a trained
    adapter learns at the position after the answer); `answer_lengths` counts the answer tokens
    plus that position.
    """

    name: str
    metric: str
    sequences: list[list[int]]
    answer_lengths: list[int]
    answers: list[int]  # accuracy: index of the right choice; exact_match: unused (0)
    choice_tokens: list[list[int]]  # accuracy: per example, the first token of each choice
    targets: list[str]  # exact_match: per example, the answer as the tokenizer decodes its tokens
    stops: list[tuple[str, ...]]  # exact_match: per example, the strings that may end the answer

    def head(self, examples: int) -> "EncodedTask":
        """The first `examples` examples only."""
        lists = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "metric")}
        return replace(self, **{name: values[:examples] for name, values in lists.items()})


@dataclass(frozen=True)
class TaskOutputs:
    """Log-probabilities at every answer position of every example (one run), and each example's verdict."""

    log_probs: torch.Tensor  # [positions, vocab], float16 to keep references small
    targets: torch.Tensor  # [positions] the answer tokens (and the closing token)
    example_of: torch.Tensor  # [positions] example index of each position
    first_positions: torch.Tensor  # [examples] the row of each example's first answer token
    correct: torch.Tensor  # [examples] bool: right under the task's metric

    def head(self, examples: int) -> "TaskOutputs":
        """The outputs of the first `examples` examples only."""
        positions = self.example_of < examples
        return TaskOutputs(self.log_probs[positions], self.targets[positions], self.example_of[positions],
                           self.first_positions[:examples], self.correct[:examples])  # fmt: skip


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


def closing_token(tokenizer) -> int:
    """The token put after every answer: end-of-sequence (padding where the tokenizer has none)."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else padding_id(tokenizer)


def encode_example(tokenizer, example: Example, prefix: list[int] | None = None) -> tuple[list[int], int]:
    """(context + answer + closing token ids, number of answer tokens + 1).

    `prefix`: `leading_special_tokens(tokenizer)`, computed here when not given.
    """
    prefix = leading_special_tokens(tokenizer) if prefix is None else prefix
    ids, start = encode_row(tokenizer, example, prefix)
    return ids + [closing_token(tokenizer)], len(ids) - start + 1


def calibration_examples(tokenizer, task: TaskSet, examples: int) -> list[tuple[list[int], int]]:
    """`encode_example` of `task`'s first `examples` train examples (its calibration rows)."""
    chosen = task.train[:examples]
    if not chosen:
        raise EvaluationError(f"task {task.name!r} has no train examples to calibrate on")
    prefix = leading_special_tokens(tokenizer)
    return [_encoded(tokenizer, task, example, prefix) for example in chosen]


def _encoded(tokenizer, task: TaskSet, example: Example, prefix: list[int]) -> tuple[list[int], int]:
    try:
        return encode_example(tokenizer, example, prefix)
    except EvaluationError as exc:
        raise EvaluationError(f"task {task.name!r}: {exc}") from None


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
    prefix = leading_special_tokens(tokenizer)
    encoded = [_encoded(tokenizer, task, example, prefix) for example in examples]
    answers, choice_tokens = [0] * len(examples), [[] for _ in examples]
    if task.metric == "accuracy":
        choice_tokens = [first_choice_tokens(tokenizer, task, e, ids[:-n], prefix)
                         for e, (ids, n) in zip(examples, encoded, strict=True)]  # fmt: skip
        answers = [example.choices.index(example.answer) for example in examples]
    return EncodedTask(
        name=task.name,
        metric=task.metric,
        sequences=[ids for ids, _ in encoded],
        answer_lengths=[n for _, n in encoded],
        answers=answers,
        choice_tokens=choice_tokens,
        targets=[decode(tokenizer, ids[-n:-1]) for ids, n in encoded],
        stops=[DEFAULT_STOPS if e.stop is None else e.stop for e in examples],
    )


def first_choice_tokens(tokenizer, task: TaskSet, example: Example, context: list[int], prefix: list[int]):
    """The first token of each choice after the row's prompt; every choice must leave the prompt's tokens
    as they are and start with a token of its own."""
    tokens = []
    for choice in example.choices:
        ids, start = encode_row(tokenizer, example, prefix, continuation=choice)
        if ids[:start] != context:
            raise EvaluationError(
                f"task {task.name!r}: choice {choice!r} changes how the end of the prompt is tokenised; "
                "end the prompt where every choice starts a token"
            )
        tokens.append(ids[start])
    if len(set(tokens)) != len(tokens):
        raise EvaluationError(
            f"task {task.name!r}: choices {list(example.choices)} do not start with distinct tokens"
        )
    return tokens


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
    """Teacher-forced log-probabilities at the answer positions and each example's verdict (example order).

    Verdicts are read off the float32 log-probabilities (the kept copy is float16, where near-ties
    round to equal values)."""
    pad_id = padding_id(tokenizer)
    accuracy = encoded.metric == "accuracy"
    per_example: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    evidence: dict[int, torch.Tensor | list[int]] = {}  # what the metric's verdict reads, per example
    for indices in batches(encoded, batch_size):
        lengths = [encoded.answer_lengths[i] for i in indices]
        logits, targets = answer_logits(model, [encoded.sequences[i] for i in indices], lengths, pad_id)
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for i, chunk, target in zip(
            indices, log_probs.split(lengths), targets.cpu().split(lengths), strict=True
        ):
            per_example[i] = (chunk.half(), target)
            evidence[i] = chunk[0, encoded.choice_tokens[i]] if accuracy else chunk.argmax(-1).tolist()
    order = range(len(encoded.sequences))
    counts = torch.tensor([len(per_example[i][1]) for i in order])
    read = [evidence[i] for i in order]
    if accuracy:
        correct = choice_verdicts(encoded, read)
    else:
        correct = exact_match_verdicts(model, tokenizer, encoded, read)
    return TaskOutputs(
        log_probs=torch.cat([per_example[i][0] for i in order]),
        targets=torch.cat([per_example[i][1] for i in order]),
        example_of=torch.repeat_interleave(torch.arange(len(order)), counts),
        first_positions=torch.cumsum(counts, 0) - counts,
        correct=correct,
    )


def choice_verdicts(encoded: EncodedTask, scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per example: does the right choice score highest (`scores`: per example, the log-probability of
    each choice's first token at the first answer position)?"""
    right = [int(row.argmax()) == answer for row, answer in zip(scores, encoded.answers, strict=True)]
    return torch.tensor(right, dtype=torch.bool)


def exact_match_verdicts(model, tokenizer, encoded: EncodedTask, argmax: list[list[int]]) -> torch.Tensor:
    """Per example: is the greedy continuation the answer, then a stop? (`argmax`: teacher-forced)"""
    stop_ids = stop_token_ids(model, tokenizer)
    right = []
    for i, sequence in enumerate(encoded.sequences):
        n = encoded.answer_lengths[i]
        context, answer = sequence[:-n], sequence[-n:-1]
        right.append(exact_match(model, tokenizer, context, answer, argmax[i], encoded.targets[i],
                                 encoded.stops[i], stop_ids))  # fmt: skip
    return torch.tensor(right, dtype=torch.bool)


def task_metric(outputs: TaskOutputs) -> float:
    """Share of examples right: exact match or accuracy, as `run_task` judged them."""
    return outputs.correct.float().mean().item()


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
        value=task_metric(outputs),
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
