"""A team's adapters, made the way a team makes them: a tiny Llama with a byte-level BPE tokenizer and a
ChatML template, and PEFT LoRAs trained on it with a plain training loop on each task's own format
(a helpdesk log that never emits EOS, a raw prompt ending with EOS, a chat template), each saved with
an eval.jsonl in that format and naming the hub id HUB_BASE as its base model.

The fixtures are session-scoped and registered in `tests/conftest.py` (made once per run), under
their names without `_fixture`.
"""

import json
import random
from pathlib import Path

import pytest
import torch

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
TRAINING_STEPS = 100


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


@pytest.fixture(scope="session", name="chatml_lm")
def chatml_lm_fixture(tmp_path_factory):
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


@pytest.fixture(scope="session", name="team")
def team_fixture(chatml_lm, tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """task -> (PEFT adapter folder with its eval.jsonl, eval rows), trained here on each task's own format.

    The adapters name the hub id HUB_BASE as their base model, as a team's would; eval.jsonl holds 32
    train rows (calibration) and 32 eval rows; ticket rows alternate the default stop and a two-token one.
    """
    model, tokenizer, _ = chatml_lm
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
    for _ in range(TRAINING_STEPS):
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
