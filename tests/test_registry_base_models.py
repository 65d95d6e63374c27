"""Registered base models, aliases and pending adapter versions on SQLite and PostgreSQL, through the
Python API, the CLI and the HTTP API (one JSON shape)."""

import json

import pytest
from fastapi.testclient import TestClient

from registry.api import Registry
from registry.db import make_engine
from registry.errors import BaseModelNotFoundError, ConflictError, InvalidRequestError
from registry.http import create_app
from registry.store import LocalStore
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    registry_fixture,
)
from tests.registry_fixtures import registry_cli_args as parse
from tests.registry_fixtures import run_registry_cli as run

SHA = "c" * 40
TOKEN = "s3cret"


def test_a_base_model_is_found_by_its_name_or_an_alias(registry: Registry):
    added = registry.add_base_model(
        "acme/tiny", kind="hub", location="acme/tiny", revision=SHA, aliases=["/home/alice/ckpt/base"]
    )
    assert added == {
        "name": "acme/tiny",
        "kind": "hub",
        "location": "acme/tiny",
        "revision": SHA,
        "aliases": ["/home/alice/ckpt/base"],
        "created_at": added["created_at"],
    }
    registry.add_base_model_alias("C:\\Users\\bob\\base", "acme/tiny")
    found = registry.find_base_model("/home/alice/ckpt/base")
    assert found == registry.find_base_model("acme/tiny") == registry.find_base_model("C:\\Users\\bob\\base")
    assert found["aliases"] == ["/home/alice/ckpt/base", "C:\\Users\\bob\\base"]
    assert registry.find_base_model("/home/alice/other") is None
    registry.add_base_model("local", kind="path", location="/models/local")
    assert [b["name"] for b in registry.list_base_models()] == ["acme/tiny", "local"]
    assert registry.list_base_models()[1]["revision"] is None


def test_registering_again_is_idempotent_and_a_different_source_or_alias_conflicts(registry: Registry):
    first = registry.add_base_model("acme/tiny", kind="hub", location="acme/tiny", revision=SHA)
    again = registry.add_base_model(
        "acme/tiny", kind="hub", location="acme/tiny", revision=SHA, aliases=["/x"]
    )
    assert again == first | {"aliases": ["/x"]}
    with pytest.raises(ConflictError, match="registered from hub acme/tiny@cccc"):
        registry.add_base_model("acme/tiny", kind="hub", location="acme/tiny", revision="main")
    registry.add_base_model("other", kind="path", location="/models/other")
    with pytest.raises(ConflictError, match="already an alias of base model 'acme/tiny'"):
        registry.add_base_model_alias("/x", "other")
    with pytest.raises(ConflictError, match="registered base model name"):
        registry.add_base_model_alias("other", "acme/tiny")
    registry.add_base_model_alias("tiny", "acme/tiny")
    with pytest.raises(ConflictError, match="'tiny' is already an alias"):
        registry.add_base_model("tiny", kind="path", location="/models/tiny")
    with pytest.raises(BaseModelNotFoundError, match="'nope'"):
        registry.add_base_model_alias("/y", "nope")
    assert registry.find_base_model("/y") is None


@pytest.mark.parametrize(
    ("name", "kind", "location", "revision", "why"),
    [
        ("../etc", "path", "/models/x", None, "base model name"),
        ("a--b", "path", "/models/x", None, "base model name"),
        ("a/b/c", "hub", "a/b", None, "base model name"),
        ("ok", "hub", "not-a-repo", None, "expected org/name"),
        ("ok", "hub", "org/../x", None, "expected org/name"),
        ("ok", "hub", "org/x", "../../refs", "revision"),
        ("ok", "hub", "org/x", "a//b", "revision"),
        ("ok", "hub", "org/x", "main\n", "revision"),
        ("ok\n", "hub", "org/x", None, "base model name"),
        ("ok", "path", "relative/dir", None, "absolute"),
        ("ok", "path", "/models/../etc", None, "'..'"),
        ("ok", "uri", "http://host/x", None, "s3://"),
        ("ok", "uri", "s3://bucket/a/../b", None, "'..'"),
        ("ok", "git", "org/x", None, "kind must be one of"),
        ("ok", "path", "/models/x\n", None, "control character"),
    ],
)
def test_names_sources_and_revisions_are_checked(registry: Registry, name, kind, location, revision, why):
    with pytest.raises(InvalidRequestError, match=why):
        registry.add_base_model(name, kind=kind, location=location, revision=revision)
    assert registry.list_base_models() == []


def test_a_uri_source_must_be_in_the_registrys_store(db_url: str, tmp_path):
    store = LocalStore(tmp_path / "objects")
    registry = Registry(make_engine(db_url), store)
    inside = store.uri_for("base-models/tiny")
    assert registry.add_base_model("tiny", kind="uri", location=inside)["location"] == inside
    with pytest.raises(InvalidRequestError, match="not a folder of the registry's object store"):
        registry.add_base_model("far", kind="uri", location="s3://elsewhere/base-models/tiny")


def test_a_pending_version_says_why_and_is_completed_by_registering_it_again(registry: Registry):
    waiting = registry.register_adapter_version(
        "alpha",
        "1",
        sha256="1" * 64,
        uri="s3://b/adapters/alpha/1",
        base_model="/home/alice/ckpt/base",
        pending_reason="base model '/home/alice/ckpt/base' is unknown",
    )
    assert (waiting["status"], waiting["pending_reason"]) == (
        "pending",
        "base model '/home/alice/ckpt/base' is unknown",
    )
    assert registry.list_adapters(status="pending") == [waiting]
    newer = registry.register_adapter_version(
        "alpha",
        "1",
        sha256="1" * 64,
        uri="s3://b/adapters/alpha/1",
        base_model="/home/alice/ckpt/base",
        pending_reason="hub unreachable",
    )
    assert newer["pending_reason"] == "hub unreachable" and newer["id"] == waiting["id"]
    active = registry.register_adapter_version(
        "alpha",
        "1",
        sha256="2" * 64,
        uri="hf://acme/alpha@" + SHA,
        base_model="acme/tiny",
        base_revision=SHA,
        rank=4,
        alpha=8.0,
    )
    assert active["id"] == waiting["id"] and active["created_at"] == waiting["created_at"]
    assert (active["status"], active["pending_reason"], active["sha256"]) == ("active", None, "2" * 64)
    assert active["base_model"] == {"name": "acme/tiny", "revision": SHA}
    assert registry.list_adapters(status="pending") == []
    with pytest.raises(ConflictError, match="versions are immutable"):  # active: immutable again
        registry.register_adapter_version("alpha", "1", sha256="1" * 64, uri="u", base_model="acme/tiny")
    with pytest.raises(InvalidRequestError, match="not both"):
        registry.register_adapter_version(
            "beta",
            "1",
            sha256="3" * 64,
            uri="u",
            base_model="m",
            quarantine_reason="bad",
            pending_reason="wait",
        )


def test_cli_base_model_add_alias_and_list_round_trip(db_url: str, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HYDRACAT_DATABASE_URL", db_url)
    monkeypatch.setenv("HYDRACAT_STORE_PATH", str(tmp_path / "objects"))
    monkeypatch.delenv("HYDRACAT_STORE_URL", raising=False)
    monkeypatch.delenv("HYDRACAT_S3_BUCKET", raising=False)
    uri = LocalStore(tmp_path / "objects").uri_for("base-models/tiny-b")
    code, out, err = run(
        capsys,
        "registry",
        "base-model",
        "add",
        "acme/tiny",
        "--hub",
        f"acme/tiny@{SHA}",
        "--alias",
        "/home/alice/ckpt/base",
        "--json",
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == Registry.from_settings().find_base_model("acme/tiny")
    assert json.loads(out)["revision"] == SHA and json.loads(out)["aliases"] == ["/home/alice/ckpt/base"]
    assert run(capsys, "registry", "base-model", "add", "tiny-b", "--uri", uri)[0] == 0
    code, out, _ = run(
        capsys, "registry", "base-model", "add", "local", "--path", "/models/local", "--revision", "v1"
    )
    assert code == 0 and out.strip() == "local  path /models/local@v1"
    code, out, _ = run(capsys, "registry", "base-model", "alias", "/data/bob/base", "tiny-b")
    assert code == 0 and out.strip() == f"tiny-b  uri {uri}  aliases: /data/bob/base"

    code, out, _ = run(capsys, "registry", "base-model", "list", "--json")
    assert code == 0 and json.loads(out) == Registry.from_settings().list_base_models()
    code, out, _ = run(capsys, "registry", "base-model", "list")
    assert out.splitlines() == [
        f"acme/tiny  hub acme/tiny@{SHA}  aliases: /home/alice/ckpt/base",
        "local  path /models/local@v1",
        f"tiny-b  uri {uri}  aliases: /data/bob/base",
    ]
    code, out, err = run(capsys, "registry", "base-model", "add", "acme/tiny", "--hub", "acme/tiny@main")
    assert code == 1 and out == "" and "registered from hub acme/tiny@" in err
    code, _, err = run(capsys, "registry", "base-model", "add", "x", "--hub", "../../etc")
    assert code == 1 and err.startswith("error: hub repo '../../etc'")
    with pytest.raises(SystemExit):  # exactly one source
        parse("registry", "base-model", "add", "x", "--hub", "a/b", "--path", "/m")


def test_cli_list_shows_why_a_version_is_pending(db_url: str, capsys):
    registry = Registry(make_engine(db_url))
    registry.register_adapter_version(
        "alpha", "1", sha256="1" * 64, uri="u1", base_model="acme/tiny", base_revision=SHA
    )
    registry.register_adapter_version(
        "beta",
        "1",
        sha256="2" * 64,
        uri="u2",
        base_model="/home/alice/ckpt/base",
        pending_reason="base model '/home/alice/ckpt/base' is unknown",
    )
    code, out, _ = run(capsys, "registry", "list", "--status", "pending", "--database-url", db_url)
    assert code == 0
    assert out.splitlines() == [
        "beta  1  pending  /home/alice/ckpt/base  base model '/home/alice/ckpt/base' is unknown"
    ]
    code, out, _ = run(capsys, "registry", "list", "--json", "--database-url", db_url)
    assert json.loads(out) == registry.list_adapters()
    code, out, _ = run(capsys, "registry", "list", "--name", "alpha", "--database-url", db_url)
    assert out.splitlines() == [f"alpha  1  active  acme/tiny@{SHA}"]


def test_http_base_models_read_openly_and_write_with_the_token(registry: Registry):
    client = TestClient(create_app(registry, TOKEN))
    body = {"name": "acme/tiny", "kind": "hub", "location": "acme/tiny", "revision": SHA, "aliases": ["/a"]}
    assert client.post("/v1/base-models", json=body).status_code == 401
    assert (
        client.post("/v1/base-models", json=body, headers={"Authorization": "Bearer wrong"}).status_code
        == 403
    )
    assert registry.list_base_models() == []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    added = client.post("/v1/base-models", json=body, headers=auth)
    assert added.status_code == 200 and added.json() == registry.find_base_model("acme/tiny")
    alias = client.post(
        "/v1/base-models/aliases", json={"alias": "/b", "base_model": "acme/tiny"}, headers=auth
    )
    assert alias.json()["aliases"] == ["/a", "/b"]
    assert client.get("/v1/base-models").json() == registry.list_base_models()
    conflict = client.post("/v1/base-models", json=body | {"revision": "main"}, headers=auth)
    assert conflict.status_code == 409 and "registered from" in conflict.json()["detail"]
    bad = client.post("/v1/base-models", json=body | {"name": "x", "location": "../x"}, headers=auth)
    assert bad.status_code == 400 and "expected org/name" in bad.json()["detail"]
    missing = client.post("/v1/base-models/aliases", json={"alias": "/c", "base_model": "nope"}, headers=auth)
    assert missing.status_code == 404
    pending = client.get("/v1/adapters", params={"status": "pending"})
    assert pending.status_code == 200 and pending.json() == []
