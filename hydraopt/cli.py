"""`hydracat merge`: merge PEFT LoRA folders into a bundle and print one JSON object.

`{"bundle_id", "bundle_uri", "method", "params", "storage", "tasks"}`: the manifest's `storage`,
and `tasks` as `task_rows` (head and relative reconstruction error per task).
"""

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable
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
    for knob in method_knobs():
        metavar = "FILE" if knob.parse is read_json_file else None
        parser.add_argument(knob.flag, dest=knob.name, type=knob.parse, choices=knob.choices, metavar=metavar,
                            help=knob.help)  # fmt: skip
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument(
        "--allow-unsupported",
        action="store_true",
        help="merge adapters with DoRA/lora_bias/modules_to_save, dropping those parts (recorded)",
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.set_defaults(handler=run_merge)


@dataclasses.dataclass(frozen=True)
class Knob:
    """One `hydracat merge` flag: a params field of one or more methods (same name, same flag)."""

    name: str
    flag: str
    parse: Callable[[str], typing.Any]
    choices: tuple | None
    help: str


def method_knobs() -> list[Knob]:
    """A flag per params field of the registered methods (`hydraopt.methods.base.knob`), with the
    methods that have it and each one's default in its help."""
    seen: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for method in METHODS.values():
        for field in dataclasses.fields(method.params_type):
            seen.setdefault(field.name, []).append((method.name, field))
    knobs = []
    for name, users in seen.items():
        method, field = users[0]
        hint = typing.get_type_hints(METHODS[method].params_type)[name]
        helps = dict.fromkeys(f.metadata.get("help", "") for _, f in users)
        defaults = {m: f.default for m, f in users if f.default is not None}
        if len(set(defaults.values())) == 1:
            defaults = {"": next(iter(defaults.values()))}
        said = ", ".join(f"{m} {v}".strip() for m, v in defaults.items())
        where = ", ".join(m for m, _ in users) + (f"; default {said}" if said else "")
        parse = parser_of(hint)
        what = "JSON file: " if parse is read_json_file else ""
        knobs.append(Knob(name, "--" + field.metadata.get("flag", name).replace("_", "-"), parse,
                          field.metadata.get("choices"), f"{what}{'; '.join(helps)} ({where})"))  # fmt: skip
    return knobs


def parser_of(hint: typing.Any) -> Callable[[str], typing.Any]:
    """How a flag's text becomes the field's value: a number or text, comma-separated numbers for a
    list, a JSON file for a mapping."""
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    origin = typing.get_origin(hint)
    if origin is list:
        item = typing.get_args(hint)[0]
        return lambda text: [item(value) for value in text.split(",")]
    if origin is dict:
        return read_json_file
    return hint


def read_json_file(path: str) -> typing.Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from None


def show_progress(done: int, total: int) -> None:
    print(f"\rmerging modules {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def run_merge(args: argparse.Namespace) -> int:
    try:
        given = {knob.name: getattr(args, knob.name) for knob in method_knobs()}
        params = {name: value for name, value in given.items() if value is not None}
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
