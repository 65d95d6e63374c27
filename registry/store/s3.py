"""Object store in an S3 bucket (AWS, MinIO, moto...) through boto3.

Each object carries its sha256 as user metadata (``x-amz-meta-sha256``). After an upload the
stored size and checksum are checked with a HEAD request; reads hash the bytes they receive
and compare them with the stored checksum, so corruption at rest is reported, not returned.
Large files go up in parts (boto3 TransferConfig).
"""

import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from registry.store.base import (
    CHUNK,
    ChecksumMismatchError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    check_sha256,
    sha256_of,
    validate_key,
    validate_prefix,
)

MULTIPART_CHUNK = 8 * 1024 * 1024
SHA256_META = "sha256"
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client=None,
        transfer_config: TransferConfig | None = None,
    ) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = validate_key(prefix) if prefix else ""
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)
        self.transfer = transfer_config or TransferConfig(
            multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK
        )

    def _full(self, key: str) -> str:
        key = validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put(self, key: str, source: BinaryIO, expected: str | None) -> ObjectInfo:
        full = self._full(key)
        digest, size = sha256_of(source)
        check_sha256(key, expected, digest)
        source.seek(0)
        self.client.upload_fileobj(
            source,
            self.bucket,
            full,
            ExtraArgs={"Metadata": {SHA256_META: digest}},
            Config=self.transfer,
        )
        head = self._head(key)
        stored = head.get("Metadata", {}).get(SHA256_META, "")
        if head["ContentLength"] != size or stored != digest:
            raise ChecksumMismatchError(key, digest, stored or f"{head['ContentLength']} bytes")
        return ObjectInfo(key=key, size=size, sha256=digest, uri=self.uri_for(key))

    def _head(self, key: str) -> dict:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            raise _translate(exc, key) from None

    def get_bytes(self, key: str) -> bytes:
        out = io.BytesIO()
        self._read_into(key, out)
        return out.getvalue()

    def download(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                self._read_into(key, out)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def _read_into(self, key: str, out: BinaryIO) -> None:
        """Stream the object into `out`, checking it against its stored sha256."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            raise _translate(exc, key) from None

        digest = hashlib.sha256()
        for chunk in response["Body"].iter_chunks(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        stored = response.get("Metadata", {}).get(SHA256_META)
        if stored is not None:
            check_sha256(key, stored, digest.hexdigest())

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "", page_size: int = 1000) -> Iterator[str]:
        validate_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root + prefix, PaginationConfig={"PageSize": page_size}
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"].removeprefix(root)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def key_for(self, uri: str) -> str | None:
        root = f"s3://{self.bucket}/" + (f"{self.prefix}/" if self.prefix else "")
        if not uri.startswith(root) or uri == root:
            return None
        return validate_key(uri.removeprefix(root))


def _translate(exc: ClientError, key: str) -> StoreError:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in _MISSING:
        return ObjectNotFoundError(key)
    return StoreError(f"S3 error on object {key!r}: {exc}")
