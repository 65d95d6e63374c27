"""Eval rows to token ids, verbatim: the prompt is the text the model sees, the answer its exact continuation.

`prompt + answer` is tokenised once, as the tokenizer itself does (`tokenizer(text)`: the special
tokens it puts first, such as a BOS, included); for a chat row the text is the tokenizer's chat
template applied to the messages with the generation prompt, which already holds its special
tokens, so none are added. The answer is every token that ends past the prompt, found from the
offsets: a token spanning the end of the prompt and the start of the answer is the answer's first
token, so no token boundary is invented ("Answer: " + "yes" and "Answer:" + " yes" are one text and
score the same). This needs a fast (Rust) tokenizer, which reports offsets.
"""

from hydraopt.errors import EvaluationError
from hydraopt.evaluation.suite import Example


def context_text(tokenizer, example: Example) -> str:
    """The text the model sees before the answer: the prompt, or the rendered chat messages."""
    if not example.chat:
        return example.prompt
    if not getattr(tokenizer, "chat_template", None):
        raise EvaluationError("the row gives chat messages, but the model's tokenizer has no chat template")
    messages = [{"role": role, "content": content} for role, content in example.messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def leading_special_tokens(tokenizer) -> list[int]:
    """The special tokens `tokenizer(text)` puts before any text (e.g. a BOS; often none)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def split_tokens(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """(token ids of `context + continuation`, index of the first token that ends past `context`)."""
    try:
        encoding = tokenizer(context + continuation, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise EvaluationError("evaluation needs a fast tokenizer (one that reports offsets)") from None
    ids, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
    start = next((i for i, (_, end) in enumerate(offsets) if end > len(context)), len(ids))
    if start == len(ids):
        raise EvaluationError(f"the answer {continuation!r} adds no token to the prompt")
    return ids, start


def encode_row(tokenizer, example: Example, prefix: list[int], continuation: str | None = None):
    """(ids of the row's prompt and `continuation` (default: its answer), index of the first answer token).

    `prefix` is `leading_special_tokens(tokenizer)`, put before a plain prompt (computed once per task).
    """
    context = context_text(tokenizer, example)
    ids, start = split_tokens(tokenizer, context, example.answer if continuation is None else continuation)
    lead = [] if example.chat else prefix
    return lead + ids, len(lead) + start
