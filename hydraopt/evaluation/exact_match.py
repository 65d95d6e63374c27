"""Exact match as greedy decoding judges it.

An answer is right when the greedy continuation of the prompt is the answer and then stops: at an
end-of-sequence token (the tokenizer's, or any the model's generation config stops at, as
`generate` does) or at one of the row's stop strings (default: a newline). Stop strings inside the
answer do not cut it. Texts are compared as the tokenizer decodes them.

The teacher-forced pass already holds the greedy choice at every answer position and at the one
after it, which decides almost every example without decoding. Only when it cannot tell (greedy
left the answer's tokens for others that may spell the same text, or stopped on a token that only
begins a stop string) is that example decoded further, one greedy token at a time.
"""

from collections.abc import Callable, Sequence

import torch

DEFAULT_STOPS = ("\n",)


def decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def stop_token_ids(model, tokenizer) -> frozenset[int]:
    """The end-of-sequence tokens: the tokenizer's and those of the model's generation config."""
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(config_eos if isinstance(config_eos, list | tuple) else [config_eos])}
    return frozenset(i for i in ids if i is not None)


def judge(text: str, ended: bool, target: str, stops: Sequence[str]) -> bool | None:
    """Verdict on greedy output `text` so far (`ended`: an end-of-sequence token came next).

    True once it is `target` followed by a stop; False once it cannot become that; None while the
    next tokens decide.
    """
    if text.startswith(target):
        rest = text[len(target) :]
        if (ended and not rest) or any(rest.startswith(stop) for stop in stops):
            return True
        if ended or (rest and not any(stop.startswith(rest) for stop in stops)):
            return False
        return None
    if ended or not target.startswith(text):
        return False
    return None


def verdict_of_tokens(tokens: Sequence[int], stop_ids: frozenset[int], decode_ids: Callable, target: str,
                      stops: Sequence[str]) -> bool | None:  # fmt: skip
    """`judge` of greedy tokens (from the first answer position), cut at the first end-of-sequence token."""
    for k, token in enumerate(tokens):
        if token in stop_ids:
            return judge(decode_ids(tokens[:k]), True, target, stops)
    return judge(decode_ids(tokens), False, target, stops)


def greedy_path(answer: Sequence[int], argmax: Sequence[int]) -> list[int]:
    """What greedy decoding produced, read off a teacher-forced pass: the answer tokens up to and
    including the first position whose argmax differs, or all of them and the argmax after them."""
    for j, token in enumerate(answer):
        if argmax[j] != token:
            return [*answer[:j], int(argmax[j])]
    return [*answer, int(argmax[len(answer)])]


@torch.no_grad()
def next_greedy_token(model, sequence: Sequence[int]) -> int:
    """The argmax next token after `sequence` (one full forward pass: used for the few undecided examples)."""
    device = model.get_output_embeddings().weight.device
    hidden = model.get_decoder()(input_ids=torch.tensor([list(sequence)], device=device)).last_hidden_state
    return int(model.get_output_embeddings()(hidden[0, -1]).argmax())


def decode_budget(target: str, stops: Sequence[str]) -> int:
    """Greedy tokens after which an undecided example counts as wrong (each token adds a byte or more)."""
    return len(target.encode()) + max((len(stop.encode()) for stop in stops), default=0) + 2


def exact_match(model, tokenizer, context: Sequence[int], answer: Sequence[int], argmax: Sequence[int],
                target: str, stops: Sequence[str], stop_ids: frozenset[int]) -> bool:  # fmt: skip
    """Whether greedy decoding after `context` gives `target` then stops; `argmax` is the teacher-forced
    argmax at the answer's positions and the one after it."""
    path = greedy_path(answer, argmax)
    decode_ids = lambda ids: decode(tokenizer, ids)  # noqa: E731 - one closure over the tokenizer
    verdict = verdict_of_tokens(path, stop_ids, decode_ids, target, stops)
    while verdict is None and len(path) < decode_budget(target, stops):
        path.append(next_greedy_token(model, [*context, *path]))
        verdict = verdict_of_tokens(path, stop_ids, decode_ids, target, stops)
    return bool(verdict)
