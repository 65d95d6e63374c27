"""The object store interface, key validation and store errors."""

import hashlib
import io
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAX_KEY_BYTES = 1024  # the S3 limit
CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


class StoreError(Exception):
    """Base class of object store errors."""


class InvalidKeyError(StoreError, ValueError):
    def __init__(self, key: object, why: str) -> None:
        super().__init__(f"invalid object key {key!r}: {why}")
        self.key = key


class ObjectNotFoundError(StoreError, LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} not found")
        self.key = key


class ChecksumMismatchError(StoreError):
    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch for object {key!r}: expected {expected}, got {actual}")
        self.key, self.expected, self.actual = key, expected, actual


def validate_key(key: object) -> str:
    """Return `key` if it is a safe relative object key, else raise InvalidKeyError.

    Keys are '/'-separated, NFC-normalised, at most 1024 UTF-8 bytes, with no empty, '.' or
    '..' segments, no leading '/' or drive letter, no backslashes and no control characters.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(key, "must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"longer than {MAX_KEY_BYTES} bytes")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in key):
        raise InvalidKeyError(key, "contains a control character")
    if "\\" in key:
        raise InvalidKeyError(key, "contains a backslash")
    if key.startswith("/") or _DRIVE.match(key):
        raise InvalidKeyError(key, "is an absolute path")
    if not unicodedata.is_normalized("NFC", key):
        raise InvalidKeyError(key, "is not NFC-normalised unicode")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKeyError(key, "has an empty, '.' or '..' segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key optionally ending with '/'."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """(hex sha256, size) of the rest of `stream`."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def check_sha256(key: str, expected: str | None, actual: str) -> None:
    if expected is not None and expected.lower() != actual:
        raise ChecksumMismatchError(key, expected, actual)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str
    uri: str


class ObjectStore(ABC):
    """Bytes under '/'-separated keys. Every method validates its key first.

    Writes compute the sha256 of the source, refuse it if it differs from `sha256` (when
    given), and verify the stored object afterwards; a mismatch raises ChecksumMismatchError.
    """

    def put_file(self, key: str, path: str | Path, sha256: str | None = None) -> ObjectInfo:
        with open(path, "rb") as source:
            return self._put(key, source, sha256)

    def put_bytes(self, key: str, data: bytes, sha256: str | None = None) -> ObjectInfo:
        return self._put(key, io.BytesIO(data), sha256)

    @abstractmethod
    def _put(self, key: str, source: BinaryIO, expected: str | None) -> ObjectInfo:
        """Store the rest of `source` under `key`, verified against `expected` when given."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def download(self, key: str, path: str | Path) -> Path: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "", page_size: int = 1000) -> Iterator[str]:
        """Keys starting with `prefix`, sorted, fetched `page_size` at a time."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def uri_for(self, key: str) -> str: ...

    @abstractmethod
    def key_for(self, uri: str) -> str | None:
        """The key behind `uri`, or None if the uri is not inside this store."""
