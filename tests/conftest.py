"""Shared fixtures: a tiny Llama base model and real PEFT adapters, cached under .cache/."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "test-models"
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".cache" / "prefect-test"))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    from flows.synthetic import build_tiny_base

    return build_tiny_base(CACHE / "tiny-llama")


@pytest.fixture(scope="session")
def peft_adapters(tiny_base: Path) -> list[Path]:
    """Four real PEFT LoRAs on the tiny base, mixed ranks (4, 4, 8, 2)."""
    from flows.synthetic import make_peft_adapter

    ranks = [4, 4, 8, 2]
    return [
        make_peft_adapter(tiny_base, CACHE / f"adapter-{i}-r{r}", seed=100 + i, rank=r, alpha=2 * r)
        for i, r in enumerate(ranks)
    ]


TINY_TASK_ANSWERS = {"alpha": "apple", "beta": "banana", "gamma": "cherry"}
FILLER = ["the", "a", "quick", "slow", "red", "blue", "green", "small", "big", "old", "new"]


@pytest.fixture(scope="session")
def tiny_tasks():
    """Three tasks whose answer is fixed per task, after a prompt of filler words and the task's name."""
    import random

    from hydraopt.evaluation.suite import Example, TaskSet

    tasks = []
    for i, (name, answer) in enumerate(TINY_TASK_ANSWERS.items()):
        rng = random.Random(i)
        words = [" ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 5))) for _ in range(48)]
        examples = [Example(f"{text} {name}", answer) for text in words]
        tasks.append(TaskSet(name, "exact_match", tuple(examples[:32]), tuple(examples[32:])))
    return tasks


@pytest.fixture(scope="session")
def tiny_lm(tiny_tasks):
    """(model, tokenizer): a tiny random Llama with a word-level tokenizer over the tiny tasks."""
    from flows.base_models import load_causal_lm
    from flows.synthetic import build_tiny_lm
    from hydraopt.evaluation.function import format_prompt

    texts = [format_prompt(e.prompt) + " " + e.answer for t in tiny_tasks for e in t.train + t.eval]
    return load_causal_lm(build_tiny_lm(CACHE / "tiny-lm", texts))


@pytest.fixture(scope="session")
def tiny_task_adapters(tiny_lm, tiny_tasks) -> list[Path]:
    """One trained PEFT LoRA per tiny task (same A init), cached."""
    from flows.training import TrainingConfig, train_lora

    model, tokenizer = tiny_lm
    config = TrainingConfig(rank=4, alpha=8, steps=40, batch_size=8, learning_rate=1e-2)
    return [
        train_lora(
            model, tokenizer, task, CACHE / "tiny-lm-adapters" / task.name, config, base_name="tiny-lm"
        )
        for task in tiny_tasks
    ]
