"""`hydracat demo`: build a tiny base model and task adapters, merge them every way, print tables.

No Prefect yet: six adapters in three planted task families on a
tiny random Llama (A near one shared init, as after training from the same A seed), merged with
the baselines and HydraOpt at K = 1, 3, 6. Each exported task adapter is loaded with PEFT and
compared with its original adapter by next-token agreement. The HydraOpt K=3 bundle is then
recorded in a SQLite registry under the work folder, every task's "current" alias points at it,
and the registry's answer for one task is printed as `hydracat registry current` prints it.
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

from flows.synthetic import build_tiny_base, llama_attention_shapes, tiny_llama_config
from hydraopt.formats.bundle import write_bundle
from hydraopt.formats.peft_lora import load_adapter, write_peft_lora
from hydraopt.merge import merge_adapters
from hydraopt.metrics import reconstruction_errors
from hydraopt.storage import storage_report

TASKS = ("summarise", "translate", "classify", "extract", "rewrite", "answer")
SETTINGS = [
    ("task_arithmetic", {}),
    ("ties", {}),
    ("dare_ties", {}),
    ("hydraopt", {"heads": 1}),
    ("hydraopt", {"heads": 3}),
    ("hydraopt", {"heads": 6}),
]


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="end-to-end demo on a tiny model")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/demo"))
    parser.set_defaults(handler=run_demo)


def write_family_adapters(folder: Path, base: Path, rank: int = 8) -> list[Path]:
    """Six LoRAs as HydraOpt meets them: A stays near a shared init, B pairs share a family."""
    config = tiny_llama_config()
    shapes = llama_attention_shapes(config.num_hidden_layers, config.hidden_size, 32)
    generator = torch.Generator().manual_seed(0)

    def noise(rows: int, cols: int, scale: float) -> torch.Tensor:
        return scale * torch.randn(rows, cols, generator=generator)

    shared_a = {m: noise(rank, d_in, d_in**-0.5) for m, (_, d_in) in shapes.items()}
    family_b = [{m: noise(d_out, rank, 0.05) for m, (d_out, _) in shapes.items()} for _ in range(3)]
    template = {
        "base_model_name_or_path": str(base),
        "task_type": "CAUSAL_LM",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    paths = []
    for index, task in enumerate(TASKS):
        modules = {
            m: (
                shared_a[m] + noise(rank, d_in, 0.1 * d_in**-0.5),
                family_b[index % 3][m] + noise(d_out, rank, 0.01),
            )
            for m, (d_out, d_in) in shapes.items()
        }
        path = folder / task
        if not (path / "adapter_config.json").is_file():
            write_peft_lora(path, modules, rank, template, torch.float32)
        paths.append(path)
    return paths


def next_tokens(model, prompts: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(prompts).logits.argmax(-1)


def token_agreement(base_model, original: Path, merged: Path, prompts: torch.Tensor) -> float:
    """Share of positions where base+merged predicts the same next token as base+original."""
    from peft import PeftModel

    reference = next_tokens(PeftModel.from_pretrained(copy.deepcopy(base_model), original).eval(), prompts)
    candidate = next_tokens(PeftModel.from_pretrained(copy.deepcopy(base_model), merged).eval(), prompts)
    return (reference == candidate).float().mean().item()


def run_demo(args: argparse.Namespace) -> int:
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    work: Path = args.workdir
    print(f"[1/4] building a tiny Llama and {len(TASKS)} task adapters under {work}", file=sys.stderr)
    base_path = build_tiny_base(work / "base")
    sources = write_family_adapters(work / "adapters", base_path)
    adapters = [load_adapter(p) for p in sources]
    base_model = LlamaForCausalLM.from_pretrained(base_path).eval()
    prompts = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))

    for adapter in adapters:
        adapter.version = "1"
    print("[2/4] merging and evaluating", file=sys.stderr)
    rows, per_task = [], {}
    for method, params in SETTINGS:
        label = method + "".join(f" K={v}" for v in params.values())
        result = merge_adapters(adapters, method, **params)
        errors = reconstruction_errors(adapters, result)
        out = work / "bundles" / label.replace(" ", "-").replace("=", "")
        manifest = write_bundle(adapters, result, out)
        agreement = {
            a.task_name: token_agreement(base_model, a.path, out / "tasks" / a.task_name, prompts)
            for a in adapters
        }
        task_errors = [e["relative_error"] for e in errors.values()]
        rows.append((label, storage_report(adapters, result).ratio, task_errors, list(agreement.values())))
        per_task[label] = (manifest, errors, agreement)
        print(f"  {label:<20} done", file=sys.stderr)

    print("[3/4] results\n", file=sys.stderr)
    print(f"{'method':<20} {'storage':>8} {'err mean':>9} {'err max':>8} {'agree mean':>10} {'agree min':>9}")
    for label, ratio, errs, agree in rows:
        print(
            f"{label:<20} {ratio:>8.3f} {sum(errs) / len(errs):>9.4f} {max(errs):>8.4f} "
            f"{sum(agree) / len(agree):>10.3f} {min(agree):>9.3f}"
        )
    chosen = "hydraopt K=3"
    manifest, errors, agreement = per_task[chosen]
    print(f"\nper task, {chosen} (bundle {manifest['bundle_id']}):")
    print(f"{'task':<12} {'head':>4} {'rel error':>10} {'agreement':>10}")
    for member in manifest["members"]:
        task = member["task"]
        print(
            f"{task:<12} {member['head']:>4} {errors[task]['relative_error']:>10.4f} {agreement[task]:>10.3f}"
        )

    print("\n[4/4] publishing to the registry", file=sys.stderr)
    database_url = f"sqlite:///{(work / 'registry.db').resolve()}"
    publish(adapters, manifest, work / "bundles" / "hydraopt-K3", database_url)
    print(f"\n$ hydracat registry current --task {TASKS[0]}")
    from flows.cli import main

    return main(["registry", "current", "--task", TASKS[0], "--database-url", database_url])


def publish(adapters, manifest: dict, bundle_path: Path, database_url: str) -> None:
    """Register the source adapters and the bundle, then point every task's alias at it."""
    from registry.api import Registry
    from registry.db import make_engine, upgrade

    engine = make_engine(database_url)
    upgrade(engine, "head")
    registry = Registry(engine)
    for adapter in adapters:
        registry.register_adapter_version(
            adapter.name,
            adapter.version,
            sha256=adapter.sha256,
            uri=str(adapter.path.resolve()),
            base_model=adapter.base_model,
            rank=adapter.max_rank,
            alpha=adapter.config["lora_alpha"],
            targets=adapter.config["target_modules"],
        )
    registry.record_bundle(
        manifest["bundle_id"], adapters[0].base_model, str(bundle_path.resolve()), manifest
    )
    for member in manifest["members"]:
        registry.move_alias(member["task"], manifest["bundle_id"], reason="hydracat demo", actor="demo")
