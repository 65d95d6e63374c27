"""`sync-catalog`: register the new adapter folders of the bucket, quarantine the bad ones.

Bucket layout: ``<prefix><name>/<version>/`` holding a PEFT LoRA (``adapter_config.json``,
``adapter_model.safetensors``) and optionally ``eval.jsonl`` (the task's eval set, in the
`hydraopt.evaluation.suite` JSONL format). The adapter name is the task it serves.

Each new folder is downloaded and checked: the safetensors header and every tensor, the config,
the eval set, and the module shapes against the base model (its folder under
HYDRACAT_MODELS_DIR). Valid folders are registered; invalid ones are registered as quarantined
with the reason, so they are reported once and never merged. A folder whose base model is not
installed yet is left pending (not registered) and picked up by a later run.
"""

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.resources import base_model_folder, open_registry, transient_error
from hydraopt.errors import HydraoptError
from hydraopt.evaluation.suite import read_task_jsonl
from hydraopt.formats.bundle import check_task_name
from hydraopt.formats.peft_lora import load_adapter
from registry.store import ObjectStore
from registry.store.base import InvalidKeyError, validate_key

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EVAL_FILE = "eval.jsonl"
RETRIES = dict(retries=3, retry_delay_seconds=[1, 4, 16], retry_condition_fn=transient_error)


@dataclass(frozen=True)
class AdapterFolder:
    """One ``<prefix><name>/<version>/`` folder of the bucket and the keys under it."""

    name: str
    version: str
    key: str
    files: tuple[str, ...]


class Pending(Exception):
    """The folder cannot be judged yet (its base model is not installed)."""


def find_adapter_folders(keys: list[str], prefix: str) -> tuple[list[AdapterFolder], list[str]]:
    """Group keys into name/version folders; returns (folders, keys refused as unsafe).

    Names start after the prefix's last "/": prefix "adapters/team-a" lists the folders
    "adapters/team-a*/<version>/" and names them "team-a*".
    """
    root = prefix[: prefix.rfind("/") + 1]
    folders: dict[tuple[str, str], list[str]] = {}
    refused = []
    for key in keys:
        try:
            validate_key(key)
        except InvalidKeyError as exc:
            refused.append(str(exc))
            continue
        parts = key.removeprefix(root).split("/")
        if len(parts) != 3:
            refused.append(f"{key!r}: expected {root}<name>/<version>/<file>")
            continue
        name, version, file = parts
        folders.setdefault((name, version), []).append(file)
    found = [
        AdapterFolder(name, version, f"{root}{name}/{version}", tuple(sorted(files)))
        for (name, version), files in sorted(folders.items())
    ]
    return found, refused


def download_folder(store: ObjectStore, folder: AdapterFolder, into: Path) -> Path:
    """The folder's files (only the known names: nothing else is fetched) into a local folder."""
    local = into / folder.name
    local.mkdir(parents=True, exist_ok=True)
    for file in folder.files:
        if file in (*ADAPTER_FILES, EVAL_FILE):
            store.download(f"{folder.key}/{file}", local / file)
    return local


def files_digest(local: Path) -> str:
    """sha256 over the folder's files (name and bytes): the identity of a folder that fails to load."""
    digest = hashlib.sha256()
    for path in sorted(local.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def base_model_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Weight shapes of a base model folder, from the safetensors headers only."""
    from safetensors import safe_open

    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def inspect_folder(folder: AdapterFolder, local: Path) -> dict:
    """Registration fields of a valid adapter folder; raises HydraoptError with the reason if not."""
    check_task_name(folder.name)  # the adapter name is its task's name, a folder name in bundles
    missing = [file for file in ADAPTER_FILES if file not in folder.files]
    pickles = [file for file in folder.files if file.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    if pickles:
        raise HydraoptError(f"pickle files are never loaded: {', '.join(pickles)}")
    if missing:
        raise HydraoptError(f"missing {', '.join(missing)}")
    adapter = load_adapter(local, task=folder.name)
    if adapter.unsupported:
        raise HydraoptError(f"unsupported LoRA features: {', '.join(adapter.unsupported)}")
    base = base_model_folder(adapter.base_model)
    if base is None:
        raise Pending(f"base model {adapter.base_model!r} is not installed under HYDRACAT_MODELS_DIR")
    shapes = base_model_shapes(base)
    for module, delta in sorted(adapter.modules.items()):
        weight = shapes.get(f"{module}.weight")
        if weight is None:
            raise HydraoptError(f"module {module!r} does not exist in base model {adapter.base_model!r}")
        if weight != delta.shape:
            raise HydraoptError(
                f"module {module!r}: update {delta.shape} does not match base weight {weight}"
            )
    if EVAL_FILE in folder.files:
        read_task_jsonl(local / EVAL_FILE, name=folder.name)
    config = adapter.config
    return {
        "sha256": adapter.sha256,
        "base_model": adapter.base_model,
        "base_revision": adapter.revision,
        "rank": adapter.max_rank,
        "alpha": float(config.get("lora_alpha", adapter.max_rank)),
        "targets": sorted(config.get("target_modules") or []),
    }


@task(**RETRIES)
def list_bucket(prefix: str) -> list[str]:
    return list(open_registry().store.list(prefix))


@task(**RETRIES, task_run_name="check {folder.name}/{folder.version}")
def check_and_register(folder: AdapterFolder) -> dict:
    """Download, inspect and register one folder: status active, quarantined or pending.

    Only what was downloaded is judged: a store error or timeout fails the task (retried if
    transient) before anything is registered, and never quarantines the folder.
    """
    registry = open_registry()
    uri = registry.store.uri_for(folder.key)
    with tempfile.TemporaryDirectory(prefix="hydracat-sync-") as tmp:
        local = download_folder(registry.store, folder, Path(tmp))
        try:
            fields = inspect_folder(folder, local)
            reason = None
        except Pending as exc:
            return {"name": folder.name, "version": folder.version, "status": "pending", "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any failure to read the downloaded files is bad input
            message = str(exc) if isinstance(exc, HydraoptError) else f"{type(exc).__name__}: {exc}"
            reason = message.replace(str(local), folder.key)
            fields = {"sha256": files_digest(local), "base_model": "unknown"}
    row = registry.register_adapter_version(
        folder.name, folder.version, uri=uri, quarantine_reason=reason, **fields
    )
    return {"name": folder.name, "version": folder.version, "status": row["status"], "reason": reason or ""}


@flow(name="sync-catalog")
def sync_catalog(prefix: str = "adapters/") -> dict:
    """Register the bucket's new adapter folders under `prefix`; quarantine invalid ones."""
    logger = get_run_logger()
    registry = open_registry()
    known = {(a["name"], a["version"]) for a in registry.list_adapters()}
    folders, refused = find_adapter_folders(list_bucket(prefix), prefix)
    new = [folder for folder in folders if (folder.name, folder.version) not in known]
    logger.info("%d adapter folders under %r, %d new", len(folders), prefix, len(new))
    results = [check_and_register(folder) for folder in new]
    results += [{"name": "-", "version": "-", "status": "refused key", "reason": why} for why in refused]
    for result in results:
        if result["status"] != "active":
            logger.warning(
                "%s %s: %s (%s)", result["name"], result["version"], result["status"], result["reason"]
            )
    create_table_artifact(
        key="sync-catalog",
        table=results or [{"status": "nothing new"}],
        description=f"sync-catalog of {prefix!r}",
    )
    summary = {
        status: sorted(f"{r['name']}/{r['version']}" for r in results if r["status"] == status)
        for status in ("active", "quarantined", "pending")
    }
    return {
        "registered": summary["active"],
        "quarantined": summary["quarantined"],
        "pending": summary["pending"],
        "refused_keys": refused,
        "known": len(folders) - len(new),
    }
