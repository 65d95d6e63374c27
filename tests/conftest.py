"""Shared fixtures: a tiny Llama base model and real PEFT adapters, cached under .cache/; Prefect's
database migrated once, kept in .cache/prefect-test; a team's adapters on their own formats
(`tests.team_fixtures`)."""

import os
from pathlib import Path

import pytest

from tests.team_fixtures import chatml_lm_fixture, team_fixture  # noqa: F401 - session fixtures, made once

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "test-models"
# Before any test imports Prefect; importing `flows` sets the project's other Prefect defaults.
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".cache" / "prefect-test"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def prefect_template() -> Path:
    """Prefect's SQLite database at the newest migration, kept in PREFECT_HOME (migrated when new or
    behind); each test server starts on a copy."""
    from flows.prefect_setup import template_database

    return template_database()


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    from bench.synthetic import build_tiny_base

    return build_tiny_base(CACHE / "tiny-llama")


@pytest.fixture(scope="session")
def peft_adapters(tiny_base: Path) -> list[Path]:
    """Four real PEFT LoRAs on the tiny base, mixed ranks (4, 4, 8, 2)."""
    from bench.synthetic import make_peft_adapter

    ranks = [4, 4, 8, 2]
    return [
        make_peft_adapter(tiny_base, CACHE / f"adapter-{i}-r{r}", seed=100 + i, rank=r, alpha=2 * r)
        for i, r in enumerate(ranks)
    ]


@pytest.fixture(scope="session")
def tiny_tasks():
    """Three tasks whose answer is fixed per task (see `bench.synthetic.tiny_tasks`)."""
    from bench.synthetic import tiny_tasks

    return tiny_tasks()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tasks):
    """(model, tokenizer): a tiny random Llama with a word-level tokenizer over the tiny tasks."""
    from bench.synthetic import build_tiny_lm
    from hydraopt.evaluation.model import load_causal_lm

    return load_causal_lm(build_tiny_lm(CACHE / "tiny-lm", tiny_tasks))


@pytest.fixture(scope="session")
def tiny_task_adapters(tiny_lm, tiny_tasks) -> list[Path]:
    """One trained PEFT LoRA per tiny task (same A init), cached."""
    from bench.synthetic import TINY_TRAINING
    from bench.training import train_lora

    model, tokenizer = tiny_lm
    config = TINY_TRAINING
    return [
        train_lora(
            model, tokenizer, task, CACHE / "tiny-lm-adapters" / task.name, config, base_name="tiny-lm"
        )
        for task in tiny_tasks
    ]
