"""Object store in a local folder: key "a/b" is the file <root>/a/b."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from registry.store.base import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    check_sha256,
    sha256_of,
    validate_key,
    validate_prefix,
)

PARTIAL = ".partial"  # suffix of files being written; never listed


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _put(self, key: str, source: BinaryIO, expected: str | None) -> ObjectInfo:
        target = self._path(key)
        digest, _ = sha256_of(source)
        check_sha256(key, expected, digest)
        source.seek(0)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=target.parent)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreError(f"cannot write object {key!r}: a parent key is an object") from exc
        try:
            with os.fdopen(fd, "w+b") as out:
                shutil.copyfileobj(source, out)
                out.flush()
                os.fsync(out.fileno())
                out.seek(0)
                written, size = sha256_of(out)  # read back what reached the disk
            check_sha256(key, digest, written)
            os.replace(tmp, target)
        except IsADirectoryError as exc:
            raise StoreError(f"cannot write object {key!r}: it is a prefix of other keys") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)
        return ObjectInfo(key=key, size=size, sha256=digest, uri=self.uri_for(key))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None

    def download(self, key: str, path: str | Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFoundError(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", page_size: int = 1000) -> Iterator[str]:
        validate_prefix(prefix)
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            folder = "" if relative == "." else f"{relative}/"
            if not (folder.startswith(prefix) or prefix.startswith(folder)):
                dirnames.clear()  # nothing below can match
                continue
            names = (folder + name for name in filenames if not name.endswith(PARTIAL))
            keys.extend(key for key in names if key.startswith(prefix))
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_for(self, uri: str) -> str | None:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return None
        path = Path(unquote(parsed.path))
        if not path.is_relative_to(self.root) or path == self.root:
            return None
        return validate_key(path.relative_to(self.root).as_posix())
