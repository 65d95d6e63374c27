"""Object store: one interface (`ObjectStore`), a local-folder and an S3 backend."""

from pathlib import Path
from urllib.parse import unquote, urlparse

from registry.settings import Settings
from registry.store.base import (
    ChecksumMismatchError,
    InvalidKeyError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    validate_key,
)
from registry.store.local import LocalStore

__all__ = [
    "ChecksumMismatchError",
    "InvalidKeyError",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "StoreError",
    "open_store",
    "validate_key",
]


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings name: HYDRACAT_STORE_URL, else an S3 bucket, else a local folder."""
    if settings.store_url:
        parsed = urlparse(settings.store_url)
        if parsed.scheme == "s3":
            return _s3(parsed.netloc, parsed.path, settings)
        if parsed.scheme == "file":
            return LocalStore(Path(unquote(parsed.path)))
        raise StoreError(f"unsupported store URL {settings.store_url!r} (use s3:// or file://)")
    if settings.s3_bucket:
        return _s3(settings.s3_bucket, settings.s3_prefix, settings)
    return LocalStore(settings.store_path)


def _s3(bucket: str, prefix: str, settings: Settings) -> ObjectStore:
    from registry.store.s3 import S3Store  # boto3 is imported only when S3 is used

    return S3Store(bucket, prefix, endpoint_url=settings.s3_endpoint_url)
