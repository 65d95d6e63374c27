"""Base models named the way users name them, resolved to a local folder; adapters from the hub.

An adapter's `base_model_name_or_path` (with its `revision`) is looked up in this order:

1. a registered base model of that name, or one that name is an alias of (`hydracat registry
   base-model add|alias`): its hub repo, local folder or object-store folder;
2. an installed folder ``HYDRACAT_MODELS_DIR/<org--name>`` (put there by an operator);
3. a hub id (``org/name``): downloaded with huggingface_hub; when the adapter names no revision,
   the commit it resolved to is registered under that name, so later adapters get the same one.

The revision is the adapter's when it names one, else the registered one. The result names the
base model canonically (registered name, pinned commit): adapters that name it differently land in
the same merge group, and resolving the canonical name again gives the same folder. Only
safetensors weights, configs and tokenizer files are fetched, into ``HYDRACAT_MODELS_DIR/.cache/``
(``hub/`` in huggingface_hub's layout, ``uri/`` one folder per object-store folder). A base model
that cannot be had now raises `BaseModelUnavailable` with what to do about it.
"""

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flows.settings import FlowSettings
from hydraopt.errors import HubUnavailableError, HydraoptError
from hydraopt.formats.hub import HubAccess, Snapshot, is_pickle, is_plain_file_name, snapshot
from hydraopt.formats.layout import is_repo_id, model_slug
from hydraopt.formats.peft_lora import download_hub_adapter
from registry.api import Registry
from registry.errors import ConflictError

MODEL_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "vocab.txt",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
})  # fmt: skip
FOLDER_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")
HINT = (
    "register it (hydracat registry base-model add NAME --hub REPO[@REV] | --path DIR | --uri URI)"
    " or alias it to a registered one (hydracat registry base-model alias ALIAS NAME)"
)


class BaseModelUnavailable(Exception):
    """The base model cannot be had now; the message says why and what to do."""


@dataclass(frozen=True)
class BaseModelFolder:
    """A resolved base model: its canonical name and revision, and the local folder of its files."""

    name: str
    revision: str | None
    folder: Path


def model_file(name: str) -> bool:
    """Files a base model folder needs: safetensors weights, configs, tokenizer files."""
    return name in MODEL_FILES or name.endswith(".safetensors")


def resolve_base_model(
    registry: Registry, name: str, revision: str | None, settings: FlowSettings
) -> BaseModelFolder:
    """The folder of base model `name` at `revision` (see the module docstring for the order)."""
    source = registry.find_base_model(name)
    if source is not None:
        return from_source(registry, source, revision, settings)
    legacy = legacy_folder(name, settings)
    if legacy is not None and legacy.is_dir():
        return BaseModelFolder(name, revision, check_model_folder(legacy, str(legacy)))
    if not is_repo_id(name):
        installed = f", or install it as {legacy}" if legacy is not None else ""
        raise BaseModelUnavailable(f"base model {name!r} is unknown: {HINT}{installed}")
    found = hub_model(name, revision, settings)
    if revision is None:  # pin the default branch's commit for the adapters that follow
        try:
            registry.add_base_model(name, kind="hub", location=name, revision=found.commit)
        except ConflictError:  # registered meanwhile: that one counts
            return from_source(registry, registry.find_base_model(name), None, settings)
    return BaseModelFolder(name, found.commit, found.folder)


def from_source(
    registry: Registry, source: dict, revision: str | None, settings: FlowSettings
) -> BaseModelFolder:
    """A registered base model's folder; a hub source takes the adapter's revision over its own."""
    name, kind, location = source["name"], source["kind"], source["location"]
    if kind == "hub":
        found = hub_model(location, revision or source["revision"], settings, registered=name)
        return BaseModelFolder(name, found.commit, found.folder)
    if revision is not None and revision != source["revision"]:
        raise BaseModelUnavailable(
            f"base model {name!r} is registered as {kind} {location} at revision {source['revision']!r};"
            f" the adapter asks for {revision!r}: register that revision under another name and alias it"
        )
    if kind == "path":
        return BaseModelFolder(name, source["revision"], check_model_folder(Path(location), location))
    folder = store_folder(registry, location, source["revision"], settings)
    return BaseModelFolder(name, source["revision"], folder)


def hub_model(
    repo: str, revision: str | None, settings: FlowSettings, registered: str | None = None
) -> Snapshot:
    """Base model files of hub repo `repo`, in the models cache; never a pickle."""
    cache = settings.models_dir / ".cache" / "hub"
    named = f"base model {registered!r} (hub {repo})" if registered else f"base model {repo!r}"
    try:
        found = snapshot(repo, revision, model_file, HubAccess.from_env(cache))
    except HubUnavailableError as exc:
        raise BaseModelUnavailable(f"{named}: {exc}; or {HINT}") from exc
    except HydraoptError as exc:
        raise BaseModelUnavailable(f"{named}: {exc}") from exc
    refuse_without_weights([*found.files, *found.skipped], f"{named}: {found.uri}")
    check_model_folder(found.folder, found.uri)
    return found


def legacy_folder(name: str, settings: FlowSettings) -> Path | None:
    """HYDRACAT_MODELS_DIR/<name with / as -->, or None when that is no safe folder name."""
    folder = model_slug(name)
    if not FOLDER_NAME.fullmatch(folder) or ".." in folder:
        return None
    return settings.models_dir / folder


def check_model_folder(folder: Path, where: str) -> Path:
    """`folder` if it holds config.json and safetensors weights; pickles only is refused."""
    if not folder.is_dir():
        raise BaseModelUnavailable(f"base model folder {where} does not exist")
    names = [path.name for path in folder.iterdir()]
    refuse_without_weights(names, f"base model folder {where}")
    if "config.json" not in names:
        raise BaseModelUnavailable(f"base model folder {where} has no config.json")
    return folder


def refuse_without_weights(names: list[str], where: str) -> None:
    """Raise unless `names` include safetensors weights, saying so when there are only pickles."""
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = sorted(name for name in names if is_pickle(name))
    what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no safetensors weights"
    raise BaseModelUnavailable(f"{where} has {what}; pickles are never loaded: register a safetensors copy")


def store_folder(registry: Registry, uri: str, revision: str, settings: FlowSettings) -> Path:
    """A base model folder of the object store, downloaded once (model files only) into the models cache."""
    key = registry.store.key_for(uri.rstrip("/"))
    if key is None:
        raise BaseModelUnavailable(f"base model uri {uri} is not in the object store")
    cache = settings.models_dir / ".cache" / "uri"
    folder = cache / hashlib.sha256(f"{uri}@{revision}".encode()).hexdigest()[:24]
    if folder.is_dir():
        return folder
    files = [k.removeprefix(f"{key}/") for k in registry.store.list(f"{key}/")]
    refuse_without_weights(files, f"base model uri {uri}")
    wanted = [name for name in files if is_plain_file_name(name) and model_file(name)]
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        for name in wanted:
            registry.store.download(f"{key}/{name}", staging / name)
        check_model_folder(staging, uri)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def hub_adapter(uri: str, settings: FlowSettings, extra_files: tuple[str, ...] = ()) -> Snapshot:
    """Adapter `hf://org/repo[@rev]` (config, weights, `extra_files`), pinned, cached in WORK_DIR/hub."""
    access = HubAccess.from_env(settings.work_dir / "hub")
    return download_hub_adapter(uri, access, extra_files)
