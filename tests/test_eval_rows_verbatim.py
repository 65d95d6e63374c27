"""Eval rows mean what they say: adapters trained here with plain PEFT on prompts of their own format
(a raw prompt that ends with a newline and never emits EOS, a raw prompt that ends with EOS, a chat
template) are scored by hydracat's evaluator exactly as a plain `model.generate` loop scores them."""

import json
import random
from pathlib import Path

import pytest
import torch

from flows.catalog import sync_catalog
from flows.cli import main as hydracat
from flows.consolidate import consolidate
from hydraopt import load_adapter
from hydraopt.evaluation import Evaluator
from hydraopt.evaluation import exact_match as exact_match_module
from hydraopt.evaluation.suite import Example, TaskSet, read_task_jsonl
from hydraopt.factors import LoraDelta
from tests.flow_fixtures import catalog_fixture, harness_fixture, sources_fixture, upload  # noqa: F401
from tests.hub_fixtures import fake_hub_fixture  # noqa: F401
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    s3_bucket_fixture,
    s3_endpoint_fixture,
)

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TICKETS = {"printer on fire": "urgent", "coffee machine empty": "low", "password reset": "normal",
           "server down": "urgent", "new mouse please": "low", "vpn slow": "normal"}  # fmt: skip
FRUITS = {"banana": "yellow", "cherry": "red", "lime": "green", "plum": "purple"}
MOODS = {"I won the lottery": "happy", "my dog is lost": "sad", "what a sunny day": "happy",
         "the cake burnt": "sad"}  # fmt: skip
FILLER = ["today", "again", "now", "please", "asap", "team", "office", "kitchen"]
HUB_BASE = "acme/chatml-lm"


def ticket_row(rng: random.Random) -> tuple[dict, str]:
    """(eval row, training text): a helpdesk log that goes on after each answer, never an EOS."""
    issue, level = rng.choice(sorted(TICKETS.items()))
    prompt = f"Ticket: {issue} {rng.choice(FILLER)}\nPriority:"
    nxt = rng.choice(sorted(TICKETS))
    return {"prompt": prompt, "answer": f" {level}"}, f"{prompt} {level}\nTicket: {nxt}\n"


def fruit_row(rng: random.Random, eos: str) -> tuple[dict, str]:
    fruit, colour = rng.choice(sorted(FRUITS.items()))
    prompt = f"Colour of the {fruit} {rng.choice(FILLER)} =>"
    return {"prompt": prompt, "answer": f" {colour}"}, f"{prompt} {colour}{eos}"


def mood_row(rng: random.Random, tokenizer) -> tuple[dict, str]:
    text, mood = rng.choice(sorted(MOODS.items()))
    messages = [{"role": "user", "content": f"Mood of: {text} {rng.choice(FILLER)}"}]
    context = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return {"messages": messages, "answer": mood}, f"{context}{mood}<|im_end|>\n"


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    """(model, tokenizer, folder): a tiny Llama and a byte-level BPE tokenizer with a ChatML template
    (eos = <|im_end|>), saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [ticket_row(rng)[1] for _ in range(200)] + [fruit_row(rng, "")[1] for _ in range(200)]
    corpus += [f"user\nMood of: {t} {w}\nassistant\n{m}\n" for t, m in MOODS.items() for w in FILLER]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)  # fmt: skip
    folder = tmp_path_factory.mktemp("chatml-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return LlamaForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder), folder


@pytest.fixture(scope="module")
def team(model_and_tokenizer, tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """task -> (PEFT adapter folder with its eval.jsonl, eval rows), trained here on each task's own format.

    The adapters name the hub id HUB_BASE as their base model, as a team's would; eval.jsonl holds 32
    train rows (calibration) and 32 eval rows; ticket rows alternate the default stop and a two-token one.
    """
    model, tokenizer, _ = model_and_tokenizer
    rng = random.Random(1)
    made = {
        "ticket": [ticket_row(rng) for _ in range(96)],
        "fruit": [fruit_row(rng, "<|im_end|>") for _ in range(96)],
        "mood": [mood_row(rng, tokenizer) for _ in range(96)],
    }
    for i, (row, _) in enumerate(made["ticket"]):
        if i % 2:
            row["stop"] = ["\nTicket:"]
    root = tmp_path_factory.mktemp("team")
    adapters = {}
    for seed, (name, rows) in enumerate(made.items()):
        folder = train_plain_peft(model, tokenizer, [text for _, text in rows[:64]], seed, root / name)
        evaluated = [row for row, _ in rows[64:]]
        lines = [row | {"metric": "exact_match", "split": "train"} for row, _ in rows[:32]]
        lines += [row | {"metric": "exact_match"} for row in evaluated]
        (folder / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        adapters[name] = (folder, evaluated)
    return adapters


def train_plain_peft(model, tokenizer, texts: list[str], seed: int, out: Path) -> Path:
    """What a team does: a PEFT LoRA, cross-entropy on the whole training text, AdamW, `save_pretrained`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    peft_model.train()
    for _ in range(150):
        loss = peft_model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.save_pretrained(out)
    peft_model.unload()
    model.eval()
    config_path = out / "adapter_config.json"  # trained on the hub's model, as the team's config says
    config = json.loads(config_path.read_text()) | {"base_model_name_or_path": HUB_BASE}
    config_path.write_text(json.dumps(config))
    return out


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


def test_evaluator_scores_each_row_as_generate_does(model_and_tokenizer, team, monkeypatch):
    model, tokenizer, _ = model_and_tokenizer
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
            with torch.no_grad():
                for module, d in deltas.items():
                    model.get_submodule(module).weight += d.B @ d.A * factor
                try:
                    theirs = generate_verdicts(model, tokenizer, rows)
                finally:
                    for module, d in deltas.items():
                        model.get_submodule(module).weight -= d.B @ d.A * factor
            assert ours == theirs, (name, factor)
            if factor == 1.0:
                assert sum(ours) >= 0.9 * len(rows), (name, sum(ours))  # the adapter knows its own format
            seen[True] += sum(ours)
            seen[False] += len(ours) - sum(ours)
    assert seen[True] and seen[False]  # both verdicts occur, so the comparison can fail
    assert decoded  # the two-token stop string sent some examples past the teacher-forced pass


def test_rows_keep_their_own_text_no_template_or_space_is_added(model_and_tokenizer):
    from hydraopt.evaluation.function import encode_task

    _, tokenizer, _ = model_and_tokenizer
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


def test_a_teams_adapters_on_a_hub_base_model_go_through_sync_consolidate_and_current(
    catalog, fake_hub, model_and_tokenizer, team, tmp_path, monkeypatch, capsys
):
    """README's "bring your own adapters": the team's folders as they are, the base model from the hub."""
    monkeypatch.setenv("HYDRACAT_MODELS_DIR", str(tmp_path / "models"))  # nothing installed by hand
    fake_hub.add(HUB_BASE, model_and_tokenizer[2])
    for name, (folder, _) in team.items():
        upload(catalog["store"], folder, f"team/{name}/1")
    assert sync_catalog(prefix="team/")["registered"] == ["fruit/1", "mood/1", "ticket/1"]
    result = consolidate(base_model=HUB_BASE, rank=24)  # K = N, r' = Σ r_i: exact, so every gate passes
    (group,) = result["groups"]
    assert group["status"] == "published" and group["refined"]
    rows = {row["task"]: row for row in group["tasks"]}
    for name in team:  # scored on the team's own prompts: each original is right on its rows
        assert rows[name]["metric"] == "exact_match" and rows[name]["original"] >= 0.9, rows[name]
        assert rows[name]["passed"] and rows[name]["retention"] >= 0.97
    assert hydracat(["registry", "current", "--task", "ticket"]) == 0
    answer = capsys.readouterr().out
    assert f"bundle:     {group['bundle_id']}" in answer and f"base model: {HUB_BASE}" in answer
