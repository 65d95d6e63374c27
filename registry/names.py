"""Checks of the names a registered base model is given: its name, source, revision and aliases;
and the label a group of compatible adapters is known by.

Names come from operators and from adapter configs, so each is refused with the reason when it
could escape a folder or a URL: no control characters, `..`, empty segments or stray separators.
"""

import hashlib
import re
import unicodedata

from hydraopt.formats.layout import SEGMENT, is_repo_id, is_revision, model_slug
from registry.errors import InvalidRequestError
from registry.models import SOURCE_KINDS

NAME = re.compile(rf"^{SEGMENT}(/{SEGMENT})?$")
URI_SCHEMES = ("s3://", "file://")
MAX_ALIAS = 1024


def check_name(name: str) -> str:
    """`name` or `org/name` (letters, digits, . _ -), the way hub ids are spelled; no `--` or `..`."""
    if not NAME.fullmatch(name) or "--" in name or ".." in name:
        raise InvalidRequestError(f"base model name {name!r}: use name or org/name (letters, digits, . _ -)")
    return name


def check_revision(revision: str) -> str:
    if not is_revision(revision):
        raise InvalidRequestError(
            f"revision {revision!r}: expected a branch, tag or commit (letters, digits, ._-/)"
        )
    return revision


def check_location(kind: str, location: str) -> str:
    """A hub repo id (`org/name`), an absolute folder path, or an s3:// or file:// URI."""
    if kind not in SOURCE_KINDS:
        raise InvalidRequestError(f"kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    _printable(location, "location")
    if kind == "hub" and not is_repo_id(location):
        raise InvalidRequestError(f"hub repo {location!r}: expected org/name")
    if kind == "path" and not location.startswith("/"):
        raise InvalidRequestError(f"path {location!r}: expected an absolute folder path")
    if kind == "uri" and not location.startswith(URI_SCHEMES):
        raise InvalidRequestError(f"uri {location!r}: expected {' or '.join(URI_SCHEMES)}")
    if kind != "hub" and ".." in location.split("/"):
        raise InvalidRequestError(f"{kind} {location!r}: '..' is not allowed")
    return location


def check_alias(alias: str) -> str:
    """Any name an adapter config may give (often a trainer's local path), printable, at most 1024 chars."""
    _printable(alias, "alias")
    if len(alias) > MAX_ALIAS:
        raise InvalidRequestError(f"alias longer than {MAX_ALIAS} characters")
    return alias


def _printable(text: str, what: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequestError(f"{what} must be a non-empty string")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in text):
        raise InvalidRequestError(f"{what} {text!r} contains a control character")


def group_label(base_model: dict, adapter_type: str, modules_digest: str | None) -> str:
    """`<base-model-slug>-<hash of the compatibility key>`: names a `Registry.compatible_groups` group
    (base model {"name", "revision"}, adapter type, modules digest), its lock and its events."""
    key = (base_model["name"], base_model["revision"], adapter_type, modules_digest)
    return f"{model_slug(base_model['name'])}-{hashlib.sha256(repr(key).encode()).hexdigest()[:8]}".lower()
