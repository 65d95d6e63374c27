"""Eval rows mean what they say: adapters trained here with plain PEFT on prompts of their own format
(a raw prompt that ends with a newline and never emits EOS, a raw prompt that ends with EOS, a chat
template) are scored by hydracat's evaluator exactly as a plain `model.generate` loop scores them."""

import torch

from hydraopt import load_adapter
from hydraopt.evaluation import Evaluator, applied
from hydraopt.evaluation import exact_match as exact_match_module
from hydraopt.evaluation.suite import Example, TaskSet, read_task_jsonl
from hydraopt.factors import LoraDelta


def generate_verdicts(model, tokenizer, rows: list[dict]) -> list[bool]:
    """The plain way: model.generate greedily, cut at EOS, right if the text is the answer, then a stop."""
    eos = tokenizer.eos_token_id
    verdicts = []
    for row in rows:
        if "messages" in row:
            text = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(row["prompt"])["input_ids"]
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()  # fmt: skip
        ended = eos in out
        text = tokenizer.decode(out[: out.index(eos)] if ended else out)
        stops = row.get("stop", ["\n"])
        right = (ended and text == row["answer"]) or any(text.startswith(row["answer"] + s) for s in stops)
        verdicts.append(right)
    return verdicts


def scaled(deltas: dict[str, LoraDelta], factor: float) -> dict[str, LoraDelta]:
    return {name: LoraDelta(d.A, d.B * factor) for name, d in deltas.items()}


def test_evaluator_scores_each_row_as_generate_does(chatml_lm, team, monkeypatch):
    model, tokenizer, _ = chatml_lm
    decoded = []
    real_next = exact_match_module.next_greedy_token
    monkeypatch.setattr(exact_match_module, "next_greedy_token",
                        lambda *args: decoded.append(1) or real_next(*args))  # fmt: skip
    task_sets = [read_task_jsonl(folder / "eval.jsonl", name=name) for name, (folder, _) in team.items()]
    evaluator = Evaluator(model, tokenizer, task_sets, batch_size=8)
    seen = {True: 0, False: 0}
    for name, (folder, rows) in team.items():
        deltas = load_adapter(folder).modules
        for factor in (1.0, 0.5, 0.0):
            ours = evaluator.run(name, scaled(deltas, factor)).correct.tolist()
            with applied(model, scaled(deltas, factor)):
                theirs = generate_verdicts(model, tokenizer, rows)
            assert ours == theirs, (name, factor)
            if factor == 1.0:
                assert sum(ours) >= 0.9 * len(rows), (name, sum(ours))  # the adapter knows its own format
            seen[True] += sum(ours)
            seen[False] += len(ours) - sum(ours)
    assert seen[True] and seen[False]  # both verdicts occur, so the comparison can fail
    assert decoded  # the two-token stop string sent some examples past the teacher-forced pass


def test_rows_keep_their_own_text_no_template_or_space_is_added(chatml_lm):
    from hydraopt.evaluation.function import encode_task

    _, tokenizer, _ = chatml_lm
    raw = Example("Ticket: vpn slow\nPriority:", " normal")
    spaced = Example("Ticket: vpn slow\nPriority: ", "normal")  # the same text, split elsewhere
    chat = Example("", "happy", messages=(("user", "Mood of: what a sunny day"),))
    encoded = encode_task(tokenizer, TaskSet("t", "exact_match", (), (raw, spaced, chat)))
    first, second, third = encoded.sequences
    assert first == second  # the boundary token " normal" is the answer's, in both
    assert tokenizer.decode(first[:-1]) == "Ticket: vpn slow\nPriority: normal"
    assert encoded.targets[:2] == [" normal", " normal"]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Mood of: what a sunny day"}],
                                             tokenize=False, add_generation_prompt=True)  # fmt: skip
    assert tokenizer.decode(third[:-1]) == rendered + "happy"
    assert encoded.answer_lengths[2] == len(tokenizer("happy", add_special_tokens=False)["input_ids"]) + 1
