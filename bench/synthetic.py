"""Small, deterministic models and adapters for the demo, the benchmarks and the tests.

`build_tiny_base` saves a randomly initialised Llama as a normal safetensors model folder;
`make_peft_adapter` makes a real PEFT LoRA on it; `write_random_lora` writes a PEFT-format
LoRA folder of any module shapes without a model (for benchmarks at real model shapes).
Everything is seeded and cached: an existing folder is reused as is.
"""

import random
from pathlib import Path

import torch

from bench.training import TrainingConfig
from hydraopt.evaluation.suite import BUILTIN_FORMAT, Example, TaskSet
from hydraopt.formats.layout import ADAPTER_CONFIG_FILE
from hydraopt.formats.peft_lora import write_peft_lora

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def tiny_llama_config(vocab_size: int = 128):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


def build_tiny_base(folder: Path, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM saved with save_pretrained (reused when present)."""
    from transformers import LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config())
    model.save_pretrained(folder)
    return folder


TINY_TASK_ANSWERS = {"alpha": "apple", "beta": "banana", "gamma": "cherry"}
FILLER = ["the", "a", "quick", "slow", "red", "blue", "green", "small", "big", "old", "new"]
TINY_TRAINING = TrainingConfig(rank=4, alpha=8, steps=40, batch_size=8, learning_rate=1e-2)


def tiny_tasks() -> list[TaskSet]:
    """Three tasks a tiny LM learns in seconds: the answer is fixed per task, after filler words."""
    tasks = []
    for i, (name, answer) in enumerate(TINY_TASK_ANSWERS.items()):
        rng = random.Random(i)
        prompts = [" ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 5))) for _ in range(48)]
        questions = [BUILTIN_FORMAT.format(question=f"{prompt} {name}") for prompt in prompts]
        examples = [Example(question, f" {answer}") for question in questions]
        tasks.append(TaskSet(name, "exact_match", tuple(examples[:32]), tuple(examples[32:])))
    return tasks


def build_tiny_lm(folder: Path, tasks: list[TaskSet], seed: int = 0) -> Path:
    """A tiny random Llama with a real word-level tokenizer over the words of `tasks` (reused when present).

    The tokenizer is a `tokenizers` WordLevel model saved as `tokenizer.json`, so
    `AutoTokenizer.from_pretrained(folder)` loads it like any other.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    texts = [e.prompt + e.answer for t in tasks for e in t.train + t.eval]
    special = ["<pad>", "</s>", "<unk>"]
    split = pre_tokenizers.WhitespaceSplit()
    words = sorted({word for text in texts for word, _ in split.pre_tokenize_str(text)} - set(special))
    vocab = {token: i for i, token in enumerate(special + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = tiny_llama_config(len(vocab))
    config.pad_token_id, config.eos_token_id = vocab["<pad>"], vocab["</s>"]
    staging = folder.with_name(folder.name + ".partial")
    LlamaForCausalLM(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder


def make_peft_adapter(
    base: Path,
    out: Path,
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 8,
    targets: tuple[str, ...] = ATTENTION,
    **lora_kwargs,
) -> Path:
    """A real PEFT LoRA on `base` with random (non-zero) A and B, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    if (out / ADAPTER_CONFIG_FILE).is_file():
        return out
    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), **lora_kwargs)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(out)
    return out


def make_peft_vera_adapter(
    base: Path, out: Path, *, seed: int, rank: int = 8, targets: tuple[str, ...] = ATTENTION, **vera_kwargs
) -> Path:
    """A real PEFT VeRA on `base` with random (non-zero) λ_b and λ_d, saved with save_pretrained
    (with its projections unless `save_projection=False` is passed)."""
    from peft import VeraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    if (out / ADAPTER_CONFIG_FILE).is_file():
        return out
    model = LlamaForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, VeraConfig(r=rank, target_modules=list(targets), **vera_kwargs))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "vera_lambda_" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(out)
    return out


def write_random_lora(
    out: Path,
    shapes: dict[str, tuple[int, int]],
    *,
    rank: int,
    seed: int,
    base_model: str,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A PEFT-format LoRA folder with random factors for modules of the given (d_out, d_in)."""
    if (out / ADAPTER_CONFIG_FILE).is_file():
        return out
    generator = torch.Generator().manual_seed(seed)
    modules = {
        name: (
            torch.randn(rank, d_in, generator=generator) / d_in**0.5,
            torch.randn(d_out, rank, generator=generator) / rank**0.5,
        )
        for name, (d_out, d_in) in shapes.items()
    }
    targets = sorted({name.rsplit(".", 1)[-1] for name in shapes})
    template = {"base_model_name_or_path": base_model, "task_type": "CAUSAL_LM", "target_modules": targets}
    write_peft_lora(out, modules, rank, template, dtype)
    return out


def llama_attention_shapes(layers: int, hidden: int, kv_out: int) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of q, k, v, o in every layer of a Llama-style model."""
    shapes = {}
    for layer in range(layers):
        prefix = f"model.layers.{layer}.self_attn"
        shapes[f"{prefix}.q_proj"] = (hidden, hidden)
        shapes[f"{prefix}.k_proj"] = (kv_out, hidden)
        shapes[f"{prefix}.v_proj"] = (kv_out, hidden)
        shapes[f"{prefix}.o_proj"] = (hidden, hidden)
    return shapes
