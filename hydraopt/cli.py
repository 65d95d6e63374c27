"""`hydracat merge`: merge PEFT LoRA folders into a bundle and print one JSON object.

`{"bundle_id", "bundle_uri", "method", "params", "storage", "tasks"}`: the manifest's `storage`,
and `tasks` as `task_rows` (head and relative reconstruction error per task).
"""

import argparse
import json
import sys
from pathlib import Path

from hydraopt.errors import HydraoptError
from hydraopt.formats.bundle import task_rows, write_bundle
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import merge_adapters
from hydraopt.methods import METHODS
from hydraopt.metrics import reconstruction_errors


def add_merge_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge LoRA adapter folders into a bundle",
        description="Merge PEFT LoRA folders (one task each, named after the folder) into a bundle.",
    )
    parser.add_argument("sources", nargs="+", metavar="SRC_DIR", help="PEFT LoRA adapter folders")
    parser.add_argument("--method", default="hydraopt", choices=sorted(METHODS))
    parser.add_argument("--heads", type=int, help="K, number of B' heads (hydraopt; default: one per task)")
    parser.add_argument("--rank", type=int, help="r', rank of the shared A' (default: max source rank)")
    parser.add_argument("--assign", type=Path, help="JSON file mapping task -> head index (hydraopt)")
    parser.add_argument("--density", type=float, help="fraction kept by ties/dare pruning")
    parser.add_argument("--seed", type=int, help="seed for clustering (hydraopt) or DARE dropping")
    parser.add_argument(
        "--weighting", choices=("absolute", "relative"),
        help="hydraopt loss: Σ‖ΔW_i−ΔW'_i‖² (absolute, default) or Σ of relative errors (relative)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument(
        "--allow-unsupported",
        action="store_true",
        help="merge adapters with DoRA/lora_bias/modules_to_save, dropping those parts (recorded)",
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.set_defaults(handler=run_merge)


def show_progress(done: int, total: int) -> None:
    print(f"\rmerging modules {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def run_merge(args: argparse.Namespace) -> int:
    try:
        params = {"heads": args.heads, "rank": args.rank, "density": args.density, "seed": args.seed,
                  "weighting": args.weighting}  # fmt: skip
        if args.assign:
            params["assignment"] = json.loads(args.assign.read_text())
        params = {k: v for k, v in params.items() if v is not None}
        adapters = [load_adapter(src) for src in args.sources]
        print(f"loaded {len(adapters)} adapters", file=sys.stderr)
        result = merge_adapters(
            adapters,
            args.method,
            device=args.device,
            allow_unsupported=args.allow_unsupported,
            progress=show_progress,
            **params,
        )
        errors = reconstruction_errors(adapters, result)
        metrics = {task: {"relative_error": e["relative_error"]} for task, e in errors.items()}
        manifest = write_bundle(adapters, result, args.out, metrics=metrics)
    except (HydraoptError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "bundle_id": manifest["bundle_id"],
        "bundle_uri": args.out.resolve().as_uri(),
        "method": manifest["method"],
        "params": manifest["params"],
        "storage": manifest["storage"],
        "tasks": task_rows({m["task"]: m["head"] for m in manifest["members"]}, manifest["metrics"]),
    }
    print(json.dumps(summary, indent=2))
    return 0
