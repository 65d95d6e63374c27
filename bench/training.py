"""Train one PEFT LoRA per task on a base model: the adapters the quality benchmark and demo merge.

Loss is cross-entropy on the answer tokens and an end-of-sequence token after them, on the rows
exactly as the evaluation encodes them (`hydraopt.evaluation.function.encode_example`).
`init_seed` seeds PEFT's initialisation of A (B starts at zero): one seed for every task gives
the shared-A-init setting HydraOpt assumes; a seed per task gives independently initialised
adapters.
Adapters are saved with `save_pretrained` and reused from the cache when present.
"""

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hydraopt.evaluation.function import answer_logits, encode_example, padding_id
from hydraopt.evaluation.suite import TaskSet
from hydraopt.formats.layout import ADAPTER_CONFIG_FILE

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
TRAINING_FILE = "hydracat_training.json"


@dataclass(frozen=True)
class TrainingConfig:
    rank: int = 8
    alpha: float = 16.0
    steps: int = 60
    batch_size: int = 16
    learning_rate: float = 2e-3
    init_seed: int = 0
    data_seed: int = 0
    targets: tuple[str, ...] = ATTENTION


def train_lora(
    model,
    tokenizer,
    task: TaskSet,
    out: Path,
    config: TrainingConfig,
    *,
    base_name: str,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train a LoRA for `task` on `model` (left unchanged) and save it as a PEFT folder at `out`."""
    from peft import LoraConfig, get_peft_model

    if (out / ADAPTER_CONFIG_FILE).is_file() and (out / TRAINING_FILE).is_file():
        return out
    torch.manual_seed(config.init_seed)
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=list(config.targets)
    )
    peft_model = get_peft_model(model, lora)
    try:
        seconds, losses = fit(peft_model, tokenizer, task, config, progress)
        staging = out.with_name(out.name + ".partial")
        peft_model.save_pretrained(staging)
    finally:
        peft_model.unload()  # the base model's modules come back as they were
    config_path = staging / ADAPTER_CONFIG_FILE
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base_name
    config_path.write_text(json.dumps(adapter_config, indent=2))
    record = {"task": task.name, "config": asdict(config), "seconds": seconds, "final_loss": losses[-1]}
    (staging / TRAINING_FILE).write_text(json.dumps(record, indent=2))
    staging.rename(out)
    return out


def fit(peft_model, tokenizer, task: TaskSet, config: TrainingConfig, progress) -> tuple[float, list[float]]:
    """AdamW on the LoRA parameters over shuffled train examples; returns (seconds, losses)."""
    encoded = [encode_example(tokenizer, example) for example in task.train]
    if not encoded:
        raise ValueError(f"task {task.name!r} has no train examples")
    pad_id = padding_id(tokenizer)
    rng = random.Random(f"{config.data_seed}:{task.name}")
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / config.steps)
    peft_model.train()
    order: list[int] = []
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps):
        if len(order) < config.batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[: config.batch_size], order[config.batch_size :]
        logits, targets = answer_logits(
            peft_model, [encoded[i][0] for i in batch], [encoded[i][1] for i in batch], pad_id
        )
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, config.steps, losses[-1])
    peft_model.eval()
    return time.perf_counter() - start, losses


def train_lora_with_bar(model, tokenizer, task: TaskSet, out: Path, config: TrainingConfig, *, base_name: str,
                        label: str) -> Path:  # fmt: skip
    """`train_lora` with a progress bar on stderr (steps and loss); a cached adapter is returned as is."""
    import sys

    from tqdm import tqdm

    if (out / ADAPTER_CONFIG_FILE).is_file() and (out / TRAINING_FILE).is_file():
        return out
    with tqdm(total=config.steps, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:

        def step(_done: int, _total: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        return train_lora(model, tokenizer, task, out, config, base_name=base_name, progress=step)
