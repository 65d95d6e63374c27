"""The bundle format: manifest.json, bundle.safetensors and one PEFT LoRA per task.

```
<bundle>/manifest.json          identity, method + params, members, metrics, storage
<bundle>/bundle.safetensors     "<module>.lora_A" (shared) and "<module>.lora_B.<head>"
<bundle>/tasks/<task>/          standard PEFT LoRA for that task (A', B'_head, r = lora_alpha = r')
```
The bundle id is content-addressed, so writing the same merge twice is a no-op. Files are
written into a temporary sibling folder that is renamed into place last.
"""

import hashlib
import json
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
from hydraopt.factors import SharedLowRank
from hydraopt.formats.layout import BUNDLE_TENSORS_FILE, MANIFEST_FILE, check_task_name, task_folder
from hydraopt.formats.peft_lora import write_peft_lora
from hydraopt.formats.safetensors_io import read_safetensors
from hydraopt.merge import MergeResult
from hydraopt.storage import storage_report

SCHEMA_VERSION = 1


def code_version() -> str:
    try:
        return version("hydracat")
    except PackageNotFoundError:
        return "unknown"


def compute_bundle_id(members: Sequence[tuple[str, str]], method: str, params: dict) -> str:
    """Hash of the sorted (task, sha256) members, method, params and format version."""
    payload = {"schema": SCHEMA_VERSION, "method": method, "params": params, "members": sorted(members)}
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
    return {
        "schema_version": SCHEMA_VERSION,
        "bundle_id": compute_bundle_id(members, result.method, result.params),
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


def bundle_tensors(result: MergeResult) -> dict[str, torch.Tensor]:
    tensors = {}
    for module, shared in result.modules.items():
        tensors[f"{module}.lora_A"] = shared.A.to(result.dtype).contiguous()
        for head in range(shared.heads):
            tensors[f"{module}.lora_B.{head}"] = shared.B[head].to(result.dtype).contiguous()
    return tensors


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
        for task, head in result.assignment.items():
            modules = {m: (s.A, s.B[head]) for m, s in result.modules.items()}
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
    modules: dict[str, SharedLowRank]

    def task_adapter_path(self, task: str) -> Path:
        return self.path / task_folder(task)

    def head_of(self, task: str) -> int:
        for member in self.manifest["members"]:
            if member["task"] == task:
                return member["head"]
        raise BundleError(f"bundle {self.manifest['bundle_id']} has no task {task!r}")


def read_bundle(folder: str | Path) -> Bundle:
    """Read and cross-check a bundle folder written by `write_bundle`."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder}: no {MANIFEST_FILE}; not a bundle") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{folder / MANIFEST_FILE}: not valid JSON ({exc})") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{folder}: unsupported bundle schema {manifest.get('schema_version')!r}")
    tensors, _ = read_safetensors(folder / BUNDLE_TENSORS_FILE)
    heads = manifest["heads"]
    modules = {}
    for key in tensors:
        if key.endswith(".lora_A"):
            module = key.removesuffix(".lora_A")
            try:
                b = torch.stack([tensors[f"{module}.lora_B.{h}"].float() for h in range(heads)])
            except KeyError as exc:
                raise BundleError(f"{folder}: missing tensor {exc.args[0]}") from None
            modules[module] = SharedLowRank(tensors[key].float(), b)
    return Bundle(folder, manifest, modules)
