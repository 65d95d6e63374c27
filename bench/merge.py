"""`hydracat bench merge`: HydraOpt against PEFT's `add_weighted_adapter` on the same adapters.

N random LoRAs at Llama-3.2-1B attention shapes (q, k, v, o in every layer) are written once into
a cache folder. Each method then runs in its own child process (`python -m bench.merge
--one ...`) so that its peak RSS is its own. Only the merge call is timed: loading the adapters
(ours) or building the PEFT model and loading every adapter into it (PEFT) is reported apart.
Every result is scored the same way: the relative reconstruction error Σ‖ΔW_i−ΔW'‖²/Σ‖ΔW_i‖² per
task (mean and max over tasks) and the storage ratio of what the method keeps against the N
source adapters.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.host import child_env
from hydraopt.formats.layout import ADAPTER_WEIGHTS_FILE, PEFT_FILES

BASE_MODEL = "synthetic/llama-3.2-1b-attention"
SEED = 1000
PEFT_METHODS = ("ties", "dare_ties", "svd")
RIVALS = ("truncation", "jd_full", "jd_diag", "core_space", "knots", "lora_lego")  # ours, at r' = r
DENSITY = 0.5


@dataclass(frozen=True)
class BenchConfig:
    adapters: int = 16
    rank: int = 16
    layers: int = 16
    hidden: int = 2048
    kv_out: int = 512
    heads: tuple[int, ...] = (16, 4)
    cache: str = ""

    def shapes(self) -> dict[str, tuple[int, int]]:
        from bench.synthetic import llama_attention_shapes

        return llama_attention_shapes(self.layers, self.hidden, self.kv_out)

    def folders(self) -> list[Path]:
        return [Path(self.cache) / f"task-{i:02d}" for i in range(self.adapters)]


def default_cache(args: argparse.Namespace) -> Path:
    name = f"merge-n{args.adapters}-r{args.rank}-l{args.layers}-h{args.hidden}-kv{args.kv_out}"
    return Path(".cache") / "bench" / name


def parse_heads(text: str, adapters: int) -> tuple[int, ...]:
    """Parse "N,4" into (N, 4): clamped to 1..N, duplicates dropped, order kept."""
    heads = []
    for part in text.split(","):
        part = part.strip()
        value = adapters if part.upper() == "N" else int(part)
        value = max(1, min(value, adapters))
        if value not in heads:
            heads.append(value)
    return tuple(heads)


def write_adapters(config: BenchConfig) -> list[Path]:
    """The N random adapters, written once (atomically per folder) and reused afterwards."""
    from bench.synthetic import write_random_lora

    shapes = config.shapes()
    for i, folder in enumerate(config.folders()):
        if all((folder / name).is_file() for name in PEFT_FILES):
            continue
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        write_random_lora(partial, shapes, rank=config.rank, seed=SEED + i, base_model=BASE_MODEL)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return config.folders()


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def summarise(adapters, result) -> dict:
    from hydraopt.metrics import reconstruction_errors
    from hydraopt.storage import storage_report

    errors = [task["relative_error"] for task in reconstruction_errors(adapters, result).values()]
    storage = storage_report(adapters, result).to_dict()
    return {
        "storage_ratio": storage["ratio"],
        "storage": storage,
        "recon_error_mean": sum(errors) / len(errors),
        "recon_error_max": max(errors),
    }


def load_all(config: BenchConfig) -> tuple[list, float]:
    from hydraopt.formats.peft_lora import load_adapter

    start = time.perf_counter()
    adapters = [load_adapter(folder) for folder in config.folders()]
    return adapters, time.perf_counter() - start


def run_ours(config: BenchConfig, method: str, label: str, **params) -> dict:
    """One of our registered methods at r' = the sources' rank, with `params`."""
    from hydraopt.device import resolve_device
    from hydraopt.merge import merge_adapters

    adapters, load_s = load_all(config)
    device = str(resolve_device(None))
    start = time.perf_counter()
    result = merge_adapters(adapters, method, rank=config.rank, **params)
    wall_s = time.perf_counter() - start
    return {
        "method": label,
        "impl": "hydracat",
        "params": {**params, "rank": config.rank, "device": device},
        "wall_s": wall_s,
        "load_s": load_s,
        **summarise(adapters, result),
    }


class Skeleton(torch.nn.Module):
    """Just the targeted Linear layers, named `model.layers.{i}.self_attn.{q,k,v,o}_proj`.

    Base weights are zeros: merging only reads the LoRA factors.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        layers = {}
        for name, (d_out, d_in) in shapes.items():
            _, _, layer, _, proj = name.split(".")
            block = layers.setdefault(int(layer), torch.nn.Module())
            if not hasattr(block, "self_attn"):
                block.self_attn = torch.nn.Module()
            linear = torch.nn.Linear(d_in, d_out, bias=False)
            torch.nn.init.zeros_(linear.weight)
            setattr(block.self_attn, proj, linear)
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(layers[i] for i in sorted(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never called
        return x


def build_peft_model(config: BenchConfig):
    """A PeftModel on the skeleton with every source adapter loaded under its own name."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    names = [folder.name for folder in config.folders()]
    model = None
    for name, folder in zip(names, config.folders()):
        lora_config = LoraConfig.from_pretrained(str(folder))
        lora_config.task_type = None  # a bare nn.Module, not a causal LM wrapper
        lora_config.inference_mode = True
        if model is None:
            model = PeftModel(Skeleton(config.shapes()), lora_config, adapter_name=name)
        else:
            model.add_adapter(name, lora_config)
        state = load_file(str(folder / ADAPTER_WEIGHTS_FILE))
        outcome = set_peft_model_state_dict(model, state, adapter_name=name)
        unexpected = getattr(outcome, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"PEFT did not take {len(unexpected)} tensors of {folder}: {unexpected[:3]}")
    return model, names


def peft_weights(method: str, n: int) -> list[float]:
    """A mean, as ours: svd sums w_i·ΔW_i, so w_i = 1/N; ties and dare_ties (which PEFT applies to
    the A and B factors separately) end in disjoint_merge, which already divides by the number of
    sign-agreeing tasks, so w_i = 1."""
    return [1.0 / n] * n if method == "svd" else [1.0] * n


def extract_merged(model, name: str, sources: list) -> tuple:
    """The merged PEFT adapter as a one-head MergeResult (scale folded into B)."""
    from hydraopt.factors import SharedLowRank
    from hydraopt.merge import MergeResult

    prefix = "base_model.model."
    modules, ranks = {}, set()
    for key, module in model.named_modules():
        if not hasattr(module, "lora_A") or name not in module.lora_A:
            continue
        a = module.lora_A[name].weight.detach().float()
        b = module.lora_B[name].weight.detach().float() * module.scaling[name]
        modules[key.removeprefix(prefix)] = SharedLowRank(a.clone(), b.clone().unsqueeze(0))
        ranks.add(a.shape[0])
    expected = set(sources[0].modules)
    if set(modules) != expected:
        raise RuntimeError(f"merged PEFT adapter covers {len(modules)} modules, sources {len(expected)}")
    tasks = [s.task_name for s in sources]
    result = MergeResult(
        method=f"peft:{name}",
        params={},
        tasks=tasks,
        assignment={t: 0 for t in tasks},
        modules=modules,
        dtype=sources[0].dtype,
    )
    return result, sorted(ranks)


def run_peft(config: BenchConfig, method: str) -> dict:
    import peft

    start = time.perf_counter()
    model, names = build_peft_model(config)
    setup_s = time.perf_counter() - start
    weights = peft_weights(method, len(names))
    kwargs: dict = {"combination_type": method}
    if method == "svd":
        kwargs["svd_rank"] = config.rank
    else:
        kwargs["density"] = DENSITY
    torch.manual_seed(0)  # dare_ties prunes at random
    start = time.perf_counter()
    with torch.no_grad():
        model.add_weighted_adapter(names, weights, "merged", **kwargs)
    wall_s = time.perf_counter() - start
    sources, _ = load_all(config)
    result, ranks = extract_merged(model, "merged", sources)
    return {
        "method": f"peft {method}",
        "impl": "peft",
        "params": {
            **kwargs,
            "weights": weights[0] if len(set(weights)) == 1 else weights,
            "merged_rank": ranks,
            "peft_version": peft.__version__,
        },
        "wall_s": wall_s,
        "load_s": setup_s,
        **summarise(sources, result),
    }


def run_one(spec: str, config: BenchConfig) -> dict:
    """One method in this process; `spec` is `hydraopt:K`, `ours:<method>` or `peft:ties|dare_ties|svd`."""
    impl, _, arg = spec.partition(":")
    if impl == "hydraopt":
        record = run_ours(config, "hydraopt", f"hydraopt K={arg}", heads=int(arg))
    elif impl == "ours" and arg in RIVALS:
        record = run_ours(config, arg, arg)
    elif impl == "peft" and arg in PEFT_METHODS:
        record = run_peft(config, arg)
    else:
        raise ValueError(f"unknown bench method {spec!r}")
    record["peak_rss_mb"] = peak_rss_mb()
    return record


def run_child(spec: str, config: BenchConfig) -> dict:
    """Run one method in a fresh interpreter and read back its JSON record."""
    env = child_env()
    config_json = json.dumps(asdict(config))
    command = [sys.executable, "-m", "bench.merge", "--one", spec, "--config", config_json]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench method {spec} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["process_s"] = time.perf_counter() - start
    return record


def machine_info() -> dict:
    import peft

    from bench.host import host_info
    from hydraopt.device import resolve_device

    return host_info() | {
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "peft_version": peft.__version__,
        "device": str(resolve_device(None)),
    }


def find(results: list[dict], method: str) -> dict | None:
    return next((r for r in results if r["method"] == method), None)


def ratios_and_targets(results: list[dict], config: BenchConfig) -> tuple[dict, dict]:
    ours = {k: find(results, f"hydraopt K={k}") for k in config.heads}
    full = ours.get(config.adapters)
    ratios = {}
    for method in PEFT_METHODS:
        theirs = find(results, f"peft {method}")
        for heads, record in ours.items():
            if theirs and record:
                label = "KN" if heads == config.adapters else f"K{heads}"
                ratios[f"peft_{method}_over_hydraopt_{label}"] = theirs["wall_s"] / record["wall_s"]
    svd = find(results, "peft svd")
    ours_rss = [r["peak_rss_mb"] for r in results if r["impl"] == "hydracat"]
    targets = {
        "hydraopt_KN_under_60s": full["wall_s"] < 60 if full else None,
        "at_least_10x_faster_than_peft_svd": (svd["wall_s"] / full["wall_s"] >= 10) if svd and full else None,
        "peak_rss_under_4GB": max(ours_rss) < 4096 if ours_rss else None,
    }
    return ratios, targets


def table(results: list[dict]) -> str:
    header = f"{'method':<18} {'impl':<8} {'wall_s':>9} {'load_s':>8} {'rss_MB':>8} {'storage':>8} " \
             f"{'err_mean':>9} {'err_max':>9}"  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['method']:<18} {r['impl']:<8} {r['wall_s']:>9.3f} {r['load_s']:>8.2f} "
            f"{r['peak_rss_mb']:>8.0f} "
            f"{r['storage_ratio']:>8.4f} {r['recon_error_mean']:>9.4f} {r['recon_error_max']:>9.4f}"
        )
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    cache = Path(args.cache) if args.cache else default_cache(args)
    config = BenchConfig(
        adapters=args.adapters, rank=args.rank, layers=args.layers, hidden=args.hidden,
        kv_out=args.kv_out, heads=parse_heads(args.heads, args.adapters), cache=str(cache),
    )  # fmt: skip
    start = time.perf_counter()
    write_adapters(config)
    print(f"[bench merge] {config.adapters} adapters in {cache} ({time.perf_counter() - start:.1f} s)",
          file=sys.stderr)  # fmt: skip
    specs = [f"hydraopt:{k}" for k in config.heads] + [f"ours:{m}" for m in args.methods]
    if not args.skip_peft:
        specs += [f"peft:{m}" for m in PEFT_METHODS]
    results = []
    for spec in specs:
        print(f"[bench merge] running {spec} ...", file=sys.stderr, flush=True)
        record = run_child(spec, config)
        results.append(record)
        print(
            f"[bench merge] {record['method']}: merge {record['wall_s']:.3f} s, peak RSS "
            f"{record['peak_rss_mb']:.0f} MB, error {record['recon_error_mean']:.4f}, "
            f"storage {record['storage_ratio']:.4f}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    ratios, targets = ratios_and_targets(results, config)
    shapes = config.shapes()
    report = {
        "machine": machine_info(),
        "config": {
            **asdict(config),
            "modules": len(shapes),
            "sum_d_in": sum(d_in for _, d_in in shapes.values()),
            "sum_d_out": sum(d_out for d_out, _ in shapes.values()),
            "base_model": BASE_MODEL,
            "seeds": [SEED + i for i in range(config.adapters)],
            "density": DENSITY,
            "peft_weights": " ".join(peft_weights.__doc__.split()),
            "timing": "wall_s times the merge call only (merge_adapters / add_weighted_adapter); "
            "load_s is loading (ours) or building the PEFT model with all adapters (PEFT)",
            "peak_rss": "ru_maxrss of the child process that ran the method",
            "recon_error": "per task Σ_m‖ΔW_i−ΔW'‖²/Σ_m‖ΔW_i‖², mean and max over tasks",
            "total_s": time.perf_counter() - start,
        },
        "results": results,
        "ratios": ratios,
        "targets": targets,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    for key, value in ratios.items():
        print(f"{key}: {value:.1f}x")
    print("targets: " + ", ".join(f"{k}={v}" for k, v in targets.items()))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def rival_list(text: str) -> list[str]:
    methods = [method for method in text.split(",") if method]
    unknown = sorted(set(methods) - set(RIVALS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {','.join(RIVALS)}")
    return methods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--adapters", type=int, default=16, help="N source adapters (default 16)")
    parser.add_argument("--rank", type=int, default=16, help="rank r of every source and r' (default 16)")
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (default 16)")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size (default 2048)")
    parser.add_argument("--kv-out", type=int, default=512, help="k/v projection out size (default 512)")
    parser.add_argument("--heads", default="N,4", help="HydraOpt K values, N = one per task (default N,4)")
    parser.add_argument("--cache", default=None, help="adapter cache folder (default .cache/bench/merge-...)")
    parser.add_argument("--skip-peft", action="store_true", help="leave PEFT's methods out (quick)")
    parser.add_argument(
        "--methods", type=rival_list, default=list(RIVALS),
        help=f"our other methods to time at r' = r, comma-separated (default {','.join(RIVALS)})",
    )  # fmt: skip


def add_merge_bench(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "merge", help="time HydraOpt merges against PEFT add_weighted_adapter on random adapters"
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_bench)


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one bench method (internal)")
    parser.add_argument("--one", required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    raw = json.loads(args.config)
    config = BenchConfig(**{**raw, "heads": tuple(raw["heads"])})
    print(json.dumps(run_one(args.one, config)))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
