"""`sync-catalog`: register the new adapter folders of the bucket, quarantine the bad ones, and keep
the ones whose base model cannot be had yet pending until it can.

Bucket layout: ``<prefix><name>/<version>/`` holding a PEFT LoRA (``adapter_config.json``,
``adapter_model.safetensors``) and optionally ``eval.jsonl`` (the task's eval set, in the
`hydraopt.evaluation.suite` JSONL format), or only a ``source.json``,
``{"uri": "hf://org/repo[@revision]"}``, naming an adapter on the hub: it is downloaded pinned to
its commit (config, safetensors weights, and the repo's own ``eval.jsonl`` if it has one) and
registered with that ``hf://org/repo@<commit>`` URI. The adapter name is the task it serves.

One listing of the bucket and one query of the registered versions find the new folders; nothing
else is read when there are none. New folders are checked in batches of `SYNC_BATCH`, one task run
each, `SYNC_THREADS` downloads ahead of the folder being checked (the safetensors header and every
tensor, the config, the eval set, and the module shapes against its base model, resolved as
`flows.model_sources` says: a registered base model or alias, an installed folder, a hub id; each
base model resolved and its shapes read once per batch), then registered in one transaction.
Valid folders are registered under the canonical base model with their compatibility key; invalid
ones as quarantined with the reason, so they are reported once and never merged. A folder whose
base model (or hub repo) cannot be had now is registered as pending with the reason, and looked at
again by every run: each base model that pending folders wait for is resolved once, and a folder
is downloaded again only when its base model resolves.
A folder without both PEFT files (and without source.json) is being uploaded: it is left
unregistered ("incomplete") for the next run, so upload ``adapter_model.safetensors`` last (after
``eval.jsonl``). Each version registered, quarantined or pending is a Prefect event
(`flows.events`): the consolidate deployment's trigger waits for a quiet spell, then merges.

The flow returns what this run registered (name/version lists, so their size follows what changed);
its `sync-catalog` table artifact lists the first `ARTIFACT_ROWS` folders not registered active
(Prefect sends an artifact's data in an event, which it refuses beyond 1.5 MB; the registry has them
all: ``hydracat registry list --status quarantined``).
"""

import hashlib
import json
import shutil
import tempfile
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.model_sources import BaseModelFolder, BaseModelUnavailable, hub_adapter, resolve_base_model
from flows.resources import RETRY_DELAYS_S, open_registry, retrying, transient_error
from flows.settings import FlowSettings
from hydraopt.adapter import Adapter
from hydraopt.errors import HubUnavailableError, HydraoptError
from hydraopt.evaluation.suite import read_task_jsonl
from hydraopt.formats.hub import parse_hub_uri
from hydraopt.formats.layout import (
    ADAPTERS_PREFIX,
    EVAL_FILE,
    PEFT_FILES,
    SOURCE_FILE,
    adapter_key,
    check_task_name,
)
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.formats.safetensors_io import PICKLE_SUFFIXES, weight_shapes
from registry.api import Registry, chunks
from registry.store import ObjectStore
from registry.store.base import InvalidKeyError, validate_key

MAX_SOURCE_BYTES = 4096
UNKNOWN = "unknown"  # the base model of a folder that could not be read
RETRIES = dict(retries=3, retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=transient_error)
SYNC_BATCH = 256  # folders per task run
SYNC_THREADS = 8  # folders of a batch downloaded at once, ahead of the one being judged
ARTIFACT_ROWS = 500  # rows of the sync-catalog table artifact


@dataclass(frozen=True)
class AdapterFolder:
    """One ``<prefix><name>/<version>/`` folder of the bucket and the keys under it."""

    name: str
    version: str
    key: str
    files: tuple[str, ...]

    @property
    def missing(self) -> list[str]:
        """The PEFT files a folder still lacks while it is being uploaded: none once both are there,
        or when it names a hub adapter (source.json) or holds pickles (refused when judged)."""
        if SOURCE_FILE in self.files or any(file.endswith(PICKLE_SUFFIXES) for file in self.files):
            return []
        return [file for file in PEFT_FILES if file not in self.files]


class Pending(Exception):
    """The folder cannot be judged yet: its hub repo cannot be had now."""


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
        AdapterFolder(name, version, adapter_key(name, version, prefix), tuple(sorted(files)))
        for (name, version), files in sorted(folders.items())
    ]
    return found, refused


def download_folder(store: ObjectStore, folder: AdapterFolder, into: Path) -> Path:
    """The folder's files (only the known names: nothing else is fetched) into a local folder."""
    local = into / folder.name
    local.mkdir(parents=True, exist_ok=True)
    for file in folder.files:
        if file in (*PEFT_FILES, EVAL_FILE, SOURCE_FILE):
            store.download(f"{folder.key}/{file}", local / file)
    return local


def files_digest(local: Path) -> str:
    """sha256 over the folder's files (name and bytes): the identity of a folder that fails to load."""
    digest = hashlib.sha256()
    for path in sorted(local.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def read_source(local: Path) -> str:
    """The `hf://org/repo[@revision]` URI of a folder's source.json."""
    data = (local / SOURCE_FILE).read_bytes()
    try:
        source = json.loads(data) if len(data) <= MAX_SOURCE_BYTES else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        source = None
    if not isinstance(source, dict) or set(source) != {"uri"} or not isinstance(source["uri"], str):
        raise HydraoptError(f'{SOURCE_FILE}: expected {{"uri": "hf://org/repo[@revision]"}}')
    parse_hub_uri(source["uri"])
    return source["uri"]


def read_folder(folder: AdapterFolder, local: Path, settings: FlowSettings) -> tuple[Adapter, str | None]:
    """The folder's adapter, and its `hf://...@<commit>` URI when source.json names a hub repo.

    Raises HydraoptError with the reason when the folder is bad, Pending when its hub repo cannot
    be had now.
    """
    check_task_name(folder.name)  # the adapter name is its task's name, a folder name in bundles
    pickles = [file for file in folder.files if file.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise HydraoptError(f"pickle files are never loaded: {', '.join(pickles)}")
    hub_uri = None
    if SOURCE_FILE in folder.files:
        beside = [file for file in (*PEFT_FILES, EVAL_FILE) if file in folder.files]
        if beside:
            raise HydraoptError(
                f"{SOURCE_FILE} names a hub adapter, {', '.join(beside)} beside it would not be used"
                f" (a hub adapter's eval set is the repo's own {EVAL_FILE})"
            )
        try:
            found = hub_adapter(read_source(local), settings, (EVAL_FILE,))
        except HubUnavailableError as exc:
            raise Pending(f"adapter repo {exc}") from exc
        local, hub_uri = found.folder, found.uri
    adapter = load_adapter(local, task=folder.name)
    if adapter.unsupported:
        raise HydraoptError(f"unsupported LoRA features: {', '.join(adapter.unsupported)}")
    if (local / EVAL_FILE).is_file():
        read_task_jsonl(local / EVAL_FILE, name=folder.name)
    return adapter, hub_uri


class BaseModels:
    """Base models resolved, and their weight shapes read, once each (for the folders of one batch)."""

    def __init__(self, registry: Registry, settings: FlowSettings):
        self.registry, self.settings = registry, settings
        self._found: dict[tuple[str, str | None], BaseModelFolder | BaseModelUnavailable] = {}
        self._shapes: dict[Path, dict[str, tuple[int, ...]]] = {}

    def resolve(self, name: str, revision: str | None) -> BaseModelFolder:
        """`resolve_base_model`, once per name and revision; raises BaseModelUnavailable as it did."""
        if (name, revision) not in self._found:
            try:
                self._found[name, revision] = resolve_base_model(self.registry, name, revision, self.settings)
            except BaseModelUnavailable as exc:
                self._found[name, revision] = exc
        found = self._found[name, revision]
        if isinstance(found, BaseModelUnavailable):
            raise found
        return found

    def shapes(self, base: BaseModelFolder) -> dict[str, tuple[int, ...]]:
        if base.folder not in self._shapes:
            self._shapes[base.folder] = weight_shapes(base.folder)
        return self._shapes[base.folder]


def check_shapes(adapter: Adapter, base: BaseModelFolder, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every module of the adapter exists in the base model (weight `shapes`) with the update's shape."""
    for module, delta in sorted(adapter.modules.items()):
        weight = shapes.get(f"{module}.weight")
        if weight is None:
            raise HydraoptError(f"module {module!r} does not exist in base model {base.name!r}")
        if weight != delta.shape:
            raise HydraoptError(
                f"module {module!r}: update {delta.shape} does not match base weight {weight}"
            )


def judge(folder: AdapterFolder, local: Path, bases: BaseModels) -> dict:
    """Registration fields of a downloaded folder: active, quarantined or pending with the reason."""
    uri = bases.registry.store.uri_for(folder.key)
    try:
        adapter, hub_uri = read_folder(folder, local, bases.settings)
    except Pending as exc:
        return {"sha256": files_digest(local), "uri": uri, "base_model": UNKNOWN, "pending_reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure to read the downloaded files is bad input
        message = str(exc) if isinstance(exc, HydraoptError) else f"{type(exc).__name__}: {exc}"
        reason = message.replace(str(local), folder.key)
        return {"sha256": files_digest(local), "uri": uri, "base_model": UNKNOWN, "quarantine_reason": reason}
    config = adapter.config
    fields = {
        "sha256": adapter.sha256,
        "uri": hub_uri or uri,
        "rank": adapter.max_rank,
        "alpha": float(config.get("lora_alpha", adapter.max_rank)),
        "targets": sorted(config.get("target_modules") or []),
        "modules_digest": adapter.compat_key().modules_digest,
    }
    try:
        base = bases.resolve(adapter.base_model, adapter.revision)
    except BaseModelUnavailable as exc:
        named = {"base_model": adapter.base_model, "base_revision": adapter.revision}
        return fields | named | {"pending_reason": str(exc)}
    fields |= {"base_model": base.name, "base_revision": base.revision}
    try:
        check_shapes(adapter, base, bases.shapes(base))
        check_chat_rows(adapter, base)
    except HydraoptError as exc:
        fields["quarantine_reason"] = str(exc)
    return fields


def check_chat_rows(adapter: Adapter, base: BaseModelFolder) -> None:
    """Eval rows given as chat messages need a chat template in the base model's tokenizer."""
    eval_file = adapter.path / EVAL_FILE
    if not eval_file.is_file():
        return
    task = read_task_jsonl(eval_file, name=adapter.task_name)
    if any(example.chat for example in task.train + task.eval) and not has_chat_template(base.folder):
        raise HydraoptError(
            f"{EVAL_FILE} gives chat messages, but base model {base.name!r} has no chat template"
        )


def has_chat_template(folder: Path) -> bool:
    """Whether a model folder's tokenizer carries a chat template (its config, or a template file)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def checked_folders(folders: list[AdapterFolder], bases: BaseModels) -> Iterator[dict]:
    """Each folder's registration fields, in order: `SYNC_THREADS` downloads run ahead while this
    thread judges the downloaded folders one by one (judging is Python work: more threads would only
    contend for the interpreter); each local copy is deleted once judged."""
    store = bases.registry.store

    def judged(folder: AdapterFolder, download: Future[Path]) -> dict:
        local = download.result()
        fields = {"name": folder.name, "version": folder.version, **judge(folder, local, bases)}
        shutil.rmtree(local)
        return fields

    with (
        tempfile.TemporaryDirectory(prefix="hydracat-sync-") as tmp,
        ThreadPoolExecutor(SYNC_THREADS) as pool,
    ):
        ahead: deque[tuple[AdapterFolder, Future[Path]]] = deque()
        for i, folder in enumerate(folders):
            ahead.append((folder, pool.submit(download_folder, store, folder, Path(tmp) / str(i))))
            if len(ahead) > SYNC_THREADS:
                yield judged(*ahead.popleft())
        while ahead:
            yield judged(*ahead.popleft())


@task(**RETRIES, task_run_name="check {folders[0].name}/{folders[0].version} and {extra} more")
def check_batch(folders: list[AdapterFolder], extra: int) -> list[dict]:
    """Download and judge a batch of folders (`checked_folders`), then register them all in one
    transaction (active, quarantined or pending); `extra` is len(folders) - 1, for the run's name.

    Only what was downloaded is judged: a store error or timeout fails the task (retried if
    transient) before anything is registered, and never quarantines a folder.
    Returns each folder's result: {"name", "version", "status", "reason"}.
    """
    settings = FlowSettings.from_env()
    bases = BaseModels(open_registry(settings.registry), settings)
    fields = list(checked_folders(folders, bases))
    return [result_of(row) for row in bases.registry.register_adapter_versions(fields)]


@task(**RETRIES, task_run_name="resolve {name}")
def waiting_base_model(name: str, revision: str | None) -> str | None:
    """None if base model `name` resolves now (fetching it into the models cache), else why not."""
    try:
        settings = FlowSettings.from_env()
        resolve_base_model(open_registry(settings.registry), name, revision, settings)
    except BaseModelUnavailable as exc:
        return str(exc)
    return None


def base_of(row: dict) -> tuple[str, str | None]:
    return row["base_model"]["name"], row["base_model"]["revision"]


def result_of(row: dict) -> dict:
    reason = row["quarantine_reason"] or row["pending_reason"] or ""
    return {"name": row["name"], "version": row["version"], "status": row["status"], "reason": reason}


def keep_pending(registry: Registry, row: dict, reason: str) -> dict:
    """A pending version still waiting for its base model, its reason brought up to date."""
    if row["pending_reason"] != reason:
        base, revision = base_of(row)
        copied = ("sha256", "uri", "adapter_type", "rank", "alpha", "targets", "modules_digest")
        fields = {key: row[key] for key in copied}
        row = registry.register_adapter_version(
            row["name"],
            row["version"],
            base_model=base,
            base_revision=revision,
            pending_reason=reason,
            **fields,
        )
    return result_of(row)


def new_folders(registry: Registry, prefix: str) -> tuple[list[AdapterFolder], list[str], int]:
    """The bucket's folders under `prefix` not registered yet or pending, the keys refused as
    unsafe, and how many folders are known: one listing and one query."""
    keys = retrying(lambda: list(registry.store.list(prefix)))
    folders, refused = find_adapter_folders(keys, prefix)
    known = retrying(registry.version_statuses)
    todo = [f for f in folders if known.get((f.name, f.version), "pending") == "pending"]
    return todo, refused, len(folders) - len(todo)


def uploading(folder: AdapterFolder) -> dict:
    """The result of a folder left for a later run: its PEFT files are not all uploaded yet."""
    reason = f"waiting for {', '.join(folder.missing)} (still uploading?): looked at again by the next sync"
    return {"name": folder.name, "version": folder.version, "status": "incomplete", "reason": reason}


def split_waiting(registry: Registry, todo: list[AdapterFolder]) -> tuple[list[AdapterFolder], list[dict]]:
    """The folders to check now, and the results of the pending ones whose base model still cannot be
    had (each such base model resolved once, in a task run of its own)."""
    wanted = {(folder.name, folder.version) for folder in todo}
    pending = retrying(lambda: registry.list_adapters(status="pending")) if todo else []
    waiting = {key: row for row in pending if (key := (row["name"], row["version"])) in wanted}
    bases = sorted({base_of(row) for row in waiting.values() if base_of(row)[0] != UNKNOWN}, key=str)
    unavailable = {base: waiting_base_model(*base) for base in bases}
    check, results = [], []
    for folder in todo:
        row = waiting.get((folder.name, folder.version))
        reason = unavailable.get(base_of(row)) if row else None
        if reason:
            results.append(keep_pending(registry, row, reason))
        else:
            check.append(folder)
    return check, results


@flow(name="sync-catalog")
def sync_catalog(prefix: str = ADAPTERS_PREFIX) -> dict:
    """Register the bucket's new adapter folders under `prefix`, quarantine invalid ones, and
    register the pending ones whose base model resolves now."""
    logger = get_run_logger()
    registry = open_registry()
    found, refused, known = new_folders(registry, prefix)
    logger.info("%d adapter folders under %r, %d new or pending", known + len(found), prefix, len(found))
    todo = [folder for folder in found if not folder.missing]
    check, results = split_waiting(registry, todo)
    results += [uploading(folder) for folder in found if folder.missing]
    for batch in chunks(check, SYNC_BATCH):
        results += check_batch(list(batch), len(batch) - 1)
        logger.info("checked %d of %d folders", len(results), len(found))
    results += [{"name": "-", "version": "-", "status": "refused key", "reason": why} for why in refused]
    problems = [result for result in results if result["status"] != "active"]
    for result in problems[:ARTIFACT_ROWS]:
        logger.warning("%s %s: %s (%s)", *(result[key] for key in ("name", "version", "status", "reason")))
    counts = Counter(result["status"] for result in results)
    more = f"; the first {ARTIFACT_ROWS} shown" if len(problems) > ARTIFACT_ROWS else ""
    create_table_artifact(
        key="sync-catalog",
        table=problems[:ARTIFACT_ROWS] or [{"status": f"{counts['active']} registered, nothing else new"}],
        description=f"sync-catalog of {prefix!r}: {dict(counts)}; the folders not registered active{more}",
    )
    summary = {
        status: {f"{r['name']}/{r['version']}": r["reason"] for r in results if r["status"] == status}
        for status in ("active", "quarantined", "pending", "incomplete")
    }
    return {
        "registered": sorted(summary["active"]),
        "quarantined": sorted(summary["quarantined"]),
        "pending": sorted(summary["pending"]),
        "pending_reasons": summary["pending"],
        "incomplete": sorted(summary["incomplete"]),
        "refused_keys": refused,
        "known": known,
    }
