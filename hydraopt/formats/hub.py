"""Hugging Face Hub repos, downloaded safely with `huggingface_hub.snapshot_download`.

Repo ids, revisions and the file names a hub lists are untrusted: ids and revisions are checked
before any request, the revision is pinned to the commit the hub resolves it to, and only files
named explicitly (top-level, picked by the caller, never a pickle) are requested. The hub's
address, token and offline switch (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``) are read
when a download starts, not when `huggingface_hub` was imported. Offline, or for a commit already
in the cache, nothing is sent: the cached snapshot is used as is.
"""

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hydraopt.errors import HubUnavailableError, HydraoptError, UnsafeFormatError
from hydraopt.formats.layout import is_repo_id, is_revision
from hydraopt.formats.safetensors_io import PICKLE_SUFFIXES

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def check_repo_id(repo: str) -> str:
    if not is_repo_id(repo):
        raise HydraoptError(f"{repo!r} is not a hub repo id (org/name: letters, digits, . _ -)")
    return repo


def check_revision(revision: str) -> str:
    if not is_revision(revision):
        raise HydraoptError(f"{revision!r} is not a valid hub revision")
    return revision


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """`hf://org/repo[@revision]` -> (repo, revision or None), both checked."""
    if not uri.startswith("hf://"):
        raise HydraoptError(f"{uri!r} is not an hf://org/repo[@revision] URI")
    repo, at, revision = uri.removeprefix("hf://").partition("@")
    return check_repo_id(repo), check_revision(revision) if at else None


@dataclass(frozen=True)
class HubAccess:
    """Where and how to reach the hub; `cache_dir` None is huggingface_hub's default cache."""

    cache_dir: Path | None = None
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    offline: bool = False

    @classmethod
    def from_env(cls, cache_dir: Path | None = None, env: Mapping[str, str] = os.environ) -> "HubAccess":
        """HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE (and HF_HUB_CACHE for `cache_dir` None) as they are
        now: huggingface_hub itself reads them once, at import."""
        return cls(
            cache_dir=cache_dir or (Path(env["HF_HUB_CACHE"]) if env.get("HF_HUB_CACHE") else None),
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=env.get("HF_TOKEN") or None,
            offline=env.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"},
        )


@dataclass(frozen=True)
class Snapshot:
    """A downloaded repo at one commit: `files` fetched into `folder`, `skipped` never requested."""

    repo: str
    commit: str
    folder: Path
    files: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"hf://{self.repo}@{self.commit}"

    @property
    def pickles(self) -> list[str]:
        return [name for name in self.skipped if is_pickle(name)]


def snapshot(repo: str, revision: str | None, wanted: Callable[[str], bool], access: HubAccess) -> Snapshot:
    """The files of `repo` at `revision` (default branch if None) that `wanted` picks, pinned to a commit.

    Only top-level files with plain names are ever picked, pickles never. Raises
    HubUnavailableError (offline and not cached, unreachable, no such repo or revision).
    """
    check_repo_id(repo)
    if revision is not None:
        check_revision(revision)
    import httpx2

    try:
        return _snapshot(repo, revision, wanted, access)
    except (OSError, ValueError, httpx2.HTTPError) as exc:  # the client's errors, network and hub answers
        raise HubUnavailableError(_explain(exc, repo, revision, access)) from exc


def _snapshot(repo: str, revision: str | None, wanted: Callable[[str], bool], access: HubAccess) -> Snapshot:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalEntryNotFoundError

    cached = _cached_names(repo, revision, access)
    if cached is not None and (access.offline or COMMIT.fullmatch(revision or "")):
        try:
            return _download(repo, revision, cached, wanted, access, local_only=True)
        except LocalEntryNotFoundError:
            if access.offline:
                raise
    if access.offline:
        where = access.cache_dir or "of huggingface_hub"
        raise HubUnavailableError(
            f"{repo}@{revision or 'main'}: HF_HUB_OFFLINE is set and it is not in the cache {where}"
        )
    info = HfApi(endpoint=access.endpoint, token=access.token).model_info(repo, revision=revision)
    if not COMMIT.fullmatch(info.sha or ""):
        raise HydraoptError(f"{repo}: the hub answered {info.sha!r}, not a commit id")
    if revision != info.sha:
        _remember_ref(repo, revision, info.sha, access)
    names = [sibling.rfilename for sibling in info.siblings or []]
    return _download(repo, info.sha, names, wanted, access, local_only=False)


def _download(repo: str, revision: str | None, names: list[str], wanted: Callable[[str], bool],
              access: HubAccess, local_only: bool) -> Snapshot:  # fmt: skip
    """`snapshot_download` of exactly the wanted plain files among `names`."""
    from huggingface_hub import snapshot_download

    chosen = sorted(name for name in names if is_plain_file_name(name) and wanted(name))
    skipped = tuple(sorted(set(names) - set(chosen)))
    if not chosen:
        where, pickles = f"{repo}@{revision}", [name for name in skipped if is_pickle(name)]
        if pickles:
            raise UnsafeFormatError(f"{where}: only pickle-based files ({', '.join(pickles)}), never loaded")
        raise HydraoptError(f"{where}: none of the files needed (it has {', '.join(skipped) or 'none'})")
    folder = Path(
        snapshot_download(
            repo,
            revision=revision,
            cache_dir=access.cache_dir,
            endpoint=access.endpoint,
            token=access.token,
            allow_patterns=chosen,  # exact names: nothing else is requested, whatever the tree lists
            local_files_only=local_only,
        )
    )
    if not COMMIT.fullmatch(folder.name):
        raise HydraoptError(f"{repo}: cached snapshot {folder} is not named by a commit id")
    return Snapshot(repo, folder.name, folder, tuple(chosen), skipped)


def _remember_ref(repo: str, revision: str | None, commit: str, access: HubAccess) -> None:
    """Record `revision` -> `commit` in the cache (``refs/<revision>``, as snapshot_download does for
    the revisions it resolves itself), so that an offline run finds the snapshot by its branch or tag."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(access.cache_dir or constants.HF_HUB_CACHE)
    ref = cache / repo_folder_name(repo_id=repo, repo_type="model") / "refs" / (revision or "main")
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


def _cached_names(repo: str, revision: str | None, access: HubAccess) -> list[str] | None:
    """File names of the cached snapshot of `revision`, or None when it was never downloaded."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        entries = get_cached_repo_tree(repo, revision=revision, cache_dir=access.cache_dir)
    except CachedRepoTreeNotFoundError:
        return None
    return [entry.path for entry in entries]


def is_plain_file_name(name: str) -> bool:
    """A top-level file name without separators, `..` or control characters, and no pickle."""
    return bool(FILE_NAME.fullmatch(name)) and ".." not in name and not is_pickle(name)


def is_pickle(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def _explain(exc: Exception, repo: str, revision: str | None, access: HubAccess) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}@{revision or 'main'}"
    if isinstance(exc, GatedRepoError):
        return f"{where}: gated repo on {access.endpoint}, set HF_TOKEN to a token with access"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{where}: no such repo on {access.endpoint} (a private repo needs HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return f"{where}: no such revision on {access.endpoint}"
    if isinstance(exc, OfflineModeIsEnabled):
        return f"{where}: huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{where}: hub {access.endpoint} unreachable ({type(exc).__name__}: {first_line})"
