"""The bundle format: manifest.json, bundle.safetensors and one PEFT LoRA per task.

```
<bundle>/manifest.json          identity, method + params, members, metrics, storage
<bundle>/bundle.safetensors     schema 1: "<module>.lora_A" (shared) and "<module>.lora_B.<head>";
                                schema 2: "<module>.lora_A.<head>" too (every head its own A');
                                schema 3: "<module>.jd_U.<group>", ".jd_Vt.<group>", ".jd_core.<member>"
<bundle>/tasks/<task>/          standard PEFT LoRA for that task (r = lora_alpha = r')
```
The bundle id is content-addressed, so writing the same merge twice is a no-op. Files are
written into a temporary sibling folder that is renamed into place last.
"""

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors.torch import save_file

from hydraopt.adapter import Adapter
from hydraopt.errors import BundleError
from hydraopt.factors import CoreLowRank, LoraDelta, ModuleFactors, SharedLowRank
from hydraopt.formats.layout import BUNDLE_TENSORS_FILE, MANIFEST_FILE, check_task_name, task_folder
from hydraopt.formats.peft_lora import write_peft_lora
from hydraopt.formats.safetensors_io import read_safetensors
from hydraopt.merge import MergeResult
from hydraopt.storage import storage_report

SHARED_A_SCHEMA, PER_HEAD_A_SCHEMA, CORE_SCHEMA = 1, 2, 3
SCHEMA_VERSIONS = (SHARED_A_SCHEMA, PER_HEAD_A_SCHEMA, CORE_SCHEMA)
TENSOR_KEY = re.compile(r"(?P<module>.+)\.(lora_A|lora_B|jd_U|jd_Vt|jd_core)(\.\d+)?")


def code_version() -> str:
    try:
        return version("hydracat")
    except PackageNotFoundError:
        return "unknown"


def module_schema(factors: ModuleFactors) -> int:
    """1: A' shared by the heads; 2: every head its own A'; 3: (U, V) per head and a core per task."""
    if isinstance(factors, CoreLowRank):
        return CORE_SCHEMA
    return PER_HEAD_A_SCHEMA if factors.per_head_a else SHARED_A_SCHEMA


def schema_version(result: MergeResult) -> int:
    return max(module_schema(factors) for factors in result.modules.values())


def compute_bundle_id(members: Sequence[tuple[str, str]], method: str, params: dict, schema: int) -> str:
    """Hash of the sorted (task, sha256) members, method, params and format version."""
    payload = {"schema": schema, "method": method, "params": params, "members": sorted(members)}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:20]


def build_manifest(
    adapters: Sequence[Adapter], result: MergeResult, metrics: dict | None = None, extra: dict | None = None
) -> dict:
    """The manifest.json content for `result` (storage without the file size, which the writer adds).

    `metrics` maps task -> {measure: value}; `task_rows` shows them per task.
    """
    members = [(a.task_name, a.sha256) for a in adapters]
    first = adapters[0]
    schema = schema_version(result)
    return {
        "schema_version": schema,
        "bundle_id": compute_bundle_id(members, result.method, result.params, schema),
        "method": result.method,
        "params": result.params,
        "rank": result.rank,
        "heads": result.heads,
        "dtype": str(result.dtype).removeprefix("torch."),
        "base_model": {"name": first.base_model, "revision": first.revision},
        "adapter_type": first.adapter_type,
        "members": [
            {
                "adapter_id": a.adapter_id or a.sha256[:16],
                "name": a.name,
                "version": a.version,
                "task": check_task_name(a.task_name),
                "sha256": a.sha256,
                "head": result.assignment[a.task_name],
            }
            for a in adapters
        ],
        "metrics": metrics or {},
        "storage": storage_report(adapters, result).to_dict(),
        "dropped_features": result.dropped_features,
        "code_version": code_version(),
        "flow_run_id": None,
        "created_at": datetime.now(UTC).isoformat(),
    } | (extra or {})


def task_rows(heads: Mapping[str, int], metrics: Mapping[str, dict]) -> list[dict]:
    """Per-task results, one row per task of `heads` (task -> head): {"task", "head", **metrics[task]}.

    The one per-task shape: `hydracat merge` and the consolidate flow print these rows.
    """
    return [{"task": task, "head": head, **metrics.get(task, {})} for task, head in heads.items()]


def numbered(module: str, kind: str, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{module}.{kind}.{i}": tensor for i, tensor in enumerate(stacked)}


def module_tensors(module: str, factors: ModuleFactors) -> dict[str, torch.Tensor]:
    """The bundle.safetensors entries of one module, in its schema's names."""
    if isinstance(factors, CoreLowRank):
        return (numbered(module, "jd_U", factors.U) | numbered(module, "jd_Vt", factors.Vt)
                | numbered(module, "jd_core", factors.cores))  # fmt: skip
    shared = numbered(module, "lora_A", factors.A) if factors.per_head_a else {f"{module}.lora_A": factors.A}
    return shared | numbered(module, "lora_B", factors.B)


def bundle_tensors(result: MergeResult) -> dict[str, torch.Tensor]:
    return {
        key: tensor.to(result.dtype).contiguous()
        for module, factors in result.modules.items()
        for key, tensor in module_tensors(module, factors).items()
    }


def write_bundle(
    adapters: Sequence[Adapter],
    result: MergeResult,
    out_dir: str | Path,
    *,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Write the bundle to `out_dir` and return its manifest.

    An existing bundle with the same id is left as it is (its manifest is returned); any other
    non-empty `out_dir` is refused rather than overwritten.
    """
    out_dir = Path(out_dir)
    manifest = build_manifest(adapters, result, metrics, extra)
    if out_dir.exists() and any(out_dir.iterdir()):
        existing = out_dir / MANIFEST_FILE
        if existing.is_file() and json.loads(existing.read_text())["bundle_id"] == manifest["bundle_id"]:
            return json.loads(existing.read_text())
        raise BundleError(
            f"{out_dir} is not empty and holds no bundle {manifest['bundle_id']}; refusing to overwrite"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(bundle_tensors(result), str(staging / BUNDLE_TENSORS_FILE), metadata={"format": "pt"})
        template = adapters[0].config
        for task in result.tasks:
            deltas = {m: result.task_delta(task, m) for m in result.modules}
            modules = {m: (delta.A, delta.B) for m, delta in deltas.items()}
            write_peft_lora(staging / task_folder(task), modules, result.rank, template, result.dtype)
        file_bytes = (staging / BUNDLE_TENSORS_FILE).stat().st_size
        manifest["storage"] = storage_report(adapters, result, file_bytes).to_dict()
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


@dataclass
class Bundle:
    """A bundle read back: its manifest and per-module shared factors (float32)."""

    path: Path
    manifest: dict
    modules: dict[str, ModuleFactors]

    def task_adapter_path(self, task: str) -> Path:
        return self.path / task_folder(task)

    def head_of(self, task: str) -> int:
        return self.member_of(task)[1]["head"]

    def member_of(self, task: str) -> tuple[int, dict]:
        """(position, manifest member) of `task`."""
        for position, member in enumerate(self.manifest["members"]):
            if member["task"] == task:
                return position, member
        raise BundleError(f"bundle {self.manifest['bundle_id']} has no task {task!r}")

    def task_delta(self, task: str, module: str) -> LoraDelta:
        position, member = self.member_of(task)
        return self.modules[module].task_delta(position, member["head"])


def read_bundle(folder: str | Path) -> Bundle:
    """Read and cross-check a bundle folder written by `write_bundle`."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder}: no {MANIFEST_FILE}; not a bundle") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{folder / MANIFEST_FILE}: not valid JSON ({exc})") from None
    schema = manifest.get("schema_version")
    if schema not in SCHEMA_VERSIONS:
        raise BundleError(
            f"{folder}: unsupported bundle schema {schema!r} (this hydracat reads {SCHEMA_VERSIONS})"
        )
    tensors, _ = read_safetensors(folder / BUNDLE_TENSORS_FILE)
    names = sorted({match["module"] for key in tensors if (match := TENSOR_KEY.fullmatch(key))})
    try:
        modules = {
            module: read_module(tensors, module, schema, manifest["heads"], len(manifest["members"]))
            for module in names
        }
    except KeyError as exc:
        raise BundleError(f"{folder}: missing tensor {exc.args[0]}") from None
    return Bundle(folder, manifest, modules)


def read_module(tensors: dict, module: str, schema: int, heads: int, members: int) -> ModuleFactors:
    def stack(kind: str, count: int) -> torch.Tensor:
        return torch.stack([tensors[f"{module}.{kind}.{i}"].float() for i in range(count)])

    if schema == CORE_SCHEMA:
        return CoreLowRank(stack("jd_U", heads), stack("jd_Vt", heads), stack("jd_core", members))
    a = stack("lora_A", heads) if schema == PER_HEAD_A_SCHEMA else tensors[f"{module}.lora_A"].float()
    return SharedLowRank(a, stack("lora_B", heads))
