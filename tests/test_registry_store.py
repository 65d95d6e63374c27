"""Object store: the local-folder backend and S3 through real boto3 against a moto server."""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

from registry.settings import Settings
from registry.store import (
    ChecksumMismatchError,
    InvalidKeyError,
    LocalStore,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    open_store,
    validate_key,
)
from registry.store.s3 import S3Store
from tests.registry_fixtures import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401

BAD_KEYS = [
    "",
    "/etc/passwd",
    "C:/windows",
    "a/../b",
    "..",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
    "line\nbreak",
    "del\x7f",
    "cafe\u0301",  # decomposed é: not NFC
    "x" * 1025,
    "é" * 513,  # 1026 UTF-8 bytes
]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(request.getfixturevalue("s3_bucket"), "root/dir", endpoint_url=endpoint)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_refuses_unsafe_keys(key: str):
    with pytest.raises(InvalidKeyError, match="invalid object key"):
        validate_key(key)


def test_validate_key_accepts_ordinary_and_nfc_unicode_keys():
    for key in ["bundles/tiny-llama/abc/manifest.json", "café/ü.txt", "a" * 1024, ".hidden/x"]:
        assert validate_key(key) == key


@pytest.mark.parametrize("key", ["../escape", "/abs", "a\\b", "cafe\u0301"])
def test_every_operation_validates_its_key(store: ObjectStore, tmp_path: Path, key: str):
    source = tmp_path / "f"
    source.write_bytes(b"x")
    operations = [
        lambda k: store.put_bytes(k, b"x"),
        lambda k: store.put_file(k, source),
        lambda k: store.get_bytes(k),
        lambda k: store.download(k, tmp_path / "out"),
        lambda k: store.exists(k),
        lambda k: store.delete(k),
        lambda k: store.uri_for(k),
        lambda k: list(store.list(k)),
    ]
    for operation in operations:
        with pytest.raises(InvalidKeyError, match="invalid object key"):
            operation(key)
    assert not (tmp_path / "escape").exists()


def test_put_get_download_delete_round_trip(store: ObjectStore, tmp_path: Path):
    data = b"hello bundle"
    info = store.put_bytes("bundles/m/b1/manifest.json", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert store.exists("bundles/m/b1/manifest.json")
    assert store.get_bytes("bundles/m/b1/manifest.json") == data
    target = store.download("bundles/m/b1/manifest.json", tmp_path / "dl" / "manifest.json")
    assert target.read_bytes() == data
    assert store.key_for(info.uri) == "bundles/m/b1/manifest.json"
    assert store.key_for("https://elsewhere/x") is None

    source = tmp_path / "file.bin"
    source.write_bytes(os.urandom(1000))
    info = store.put_file("bundles/m/b1/bundle.safetensors", source, sha256=info_sha(source))
    assert store.get_bytes("bundles/m/b1/bundle.safetensors") == source.read_bytes()

    store.delete("bundles/m/b1/manifest.json")
    store.delete("bundles/m/b1/manifest.json")  # deleting a missing key is fine
    assert not store.exists("bundles/m/b1/manifest.json")


def info_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_object_raises_not_found_naming_the_key(store: ObjectStore, tmp_path: Path):
    with pytest.raises(ObjectNotFoundError, match="'no/such/key'"):
        store.get_bytes("no/such/key")
    with pytest.raises(ObjectNotFoundError, match="'no/such/key'"):
        store.download("no/such/key", tmp_path / "out")
    assert not store.exists("no/such/key")
    assert not (tmp_path / "out").exists()


def test_wrong_expected_sha256_is_refused_before_writing(store: ObjectStore):
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch for object 'a/b'"):
        store.put_bytes("a/b", b"data", sha256="0" * 64)
    assert not store.exists("a/b")
    assert list(store.list()) == []


def test_list_filters_by_prefix_and_pages(store: ObjectStore):
    keys = [f"p/{i:03d}" for i in range(25)] + ["q/1", "p2/x", "p/sub/deep"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert list(store.list()) == sorted(keys)
    assert list(store.list("p/", page_size=7)) == sorted(k for k in keys if k.startswith("p/"))
    assert list(store.list("p", page_size=4)) == sorted(k for k in keys if k.startswith("p"))
    assert list(store.list("none/")) == []


def test_local_store_never_lists_partial_files(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_bytes("a/b", b"1")
    (tmp_path / "a" / ".b.123.partial").write_bytes(b"half")
    assert list(store.list()) == ["a/b"]


def test_s3_multipart_upload_of_a_large_file(s3_endpoint: str, s3_bucket: str, tmp_path: Path):
    store = S3Store(s3_bucket, "big", endpoint_url=s3_endpoint)
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(17 * 1024 * 1024 + 123))
    info = store.put_file("bundles/m/b/bundle.safetensors", source, sha256=info_sha(source))
    assert info.size == source.stat().st_size
    head = store.client.head_object(Bucket=s3_bucket, Key="big/bundles/m/b/bundle.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # three 8 MiB parts
    target = store.download("bundles/m/b/bundle.safetensors", tmp_path / "back.bin")
    assert info_sha(target) == info.sha256


def test_s3_listing_paginates_past_1000_keys(s3_endpoint: str, s3_bucket: str):
    store = S3Store(s3_bucket, "many", endpoint_url=s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [f"k/{i:05d}" for i in range(1105)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_bucket, Key=f"many/{k}", Body=b""), keys))
    assert list(store.list("k/")) == keys
    assert list(store.list("k/", page_size=300)) == keys


def test_s3_corruption_at_rest_is_detected_on_read(s3_endpoint: str, s3_bucket: str, tmp_path):
    store = S3Store(s3_bucket, "", endpoint_url=s3_endpoint)
    info = store.put_bytes("a/obj", b"original")
    head = store.client.head_object(Bucket=s3_bucket, Key="a/obj")
    assert head["Metadata"]["sha256"] == info.sha256
    store.client.put_object(Bucket=s3_bucket, Key="a/obj", Body=b"tampered", Metadata=head["Metadata"])
    with pytest.raises(ChecksumMismatchError, match=f"expected {info.sha256}"):
        store.get_bytes("a/obj")
    with pytest.raises(ChecksumMismatchError):
        store.download("a/obj", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_open_store_follows_settings(tmp_path: Path, s3_endpoint: str):
    local = open_store(Settings.from_env({"HYDRACAT_STORE_PATH": str(tmp_path / "s")}))
    assert isinstance(local, LocalStore) and local.root == tmp_path / "s"
    by_url = open_store(Settings.from_env({"HYDRACAT_STORE_URL": f"file://{tmp_path}/u"}))
    assert isinstance(by_url, LocalStore) and by_url.root == tmp_path / "u"
    s3 = open_store(
        Settings.from_env(
            {"HYDRACAT_STORE_URL": "s3://bkt/some/prefix", "HYDRACAT_S3_ENDPOINT_URL": s3_endpoint}
        )
    )
    assert isinstance(s3, S3Store) and s3.uri_for("x") == "s3://bkt/some/prefix/x"
    env = {"HYDRACAT_S3_BUCKET": "b2", "HYDRACAT_S3_PREFIX": "pre"}
    assert open_store(Settings.from_env(env)).uri_for("k") == "s3://b2/pre/k"
    default = open_store(Settings.from_env({"XDG_DATA_HOME": str(tmp_path / "xdg")}))
    assert default.uri_for("k") == (tmp_path / "xdg" / "hydracat" / "objects" / "k").as_uri()


def test_local_store_refuses_a_key_that_is_also_a_prefix(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_bytes("a/b", b"1")
    with pytest.raises(StoreError, match="'a': it is a prefix of other keys"):
        store.put_bytes("a", b"2")
    with pytest.raises(StoreError, match="'a/b/c': a parent key is an object"):
        store.put_bytes("a/b/c", b"3")
    assert store.get_bytes("a/b") == b"1" and list(store.list()) == ["a/b"]
