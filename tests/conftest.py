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
