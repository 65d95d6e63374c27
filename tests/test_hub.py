"""hydraopt.formats.hub and the `hf://` adapter loader against a fake hub on loopback, through the real
huggingface_hub client: pinned commits, only the named safe files, HF_* settings read at call time."""

import pickle
from pathlib import Path

import pytest

from bench.bad_inputs import FileCreator
from hydraopt.errors import HubUnavailableError, HydraoptError, UnsafeFormatError
from hydraopt.formats.hub import HubAccess, snapshot
from hydraopt.formats.peft_lora import load_adapter
from tests.fake_hub import FakeHub
from tests.hub_fixtures import fake_hub_fixture  # noqa: F401

WEIGHTS_AND_CONFIG = {"config.json", "model.safetensors"}.__contains__


def repo_files(marker: Path) -> dict[str, bytes]:
    return {
        "config.json": b"{}",
        "model.safetensors": b"weights",
        "pytorch_model.bin": pickle.dumps(FileCreator(marker)),
        "README.md": b"# tiny",
        "../escape.safetensors": b"outside",
    }


def test_only_named_plain_files_are_requested_and_the_revision_is_pinned(fake_hub: FakeHub, tmp_path):
    commit = fake_hub.add("acme/tiny", repo_files(tmp_path / "PWNED"))
    found = snapshot("acme/tiny", None, WEIGHTS_AND_CONFIG, HubAccess.from_env(tmp_path / "cache"))
    assert (found.commit, found.uri) == (commit, f"hf://acme/tiny@{commit}")
    assert found.files == ("config.json", "model.safetensors")
    assert sorted(path.name for path in found.folder.iterdir()) == ["config.json", "model.safetensors"]
    assert found.folder.is_relative_to(tmp_path / "cache") and found.folder.name == commit
    assert set(fake_hub.fetched("acme/tiny")) == {"config.json", "model.safetensors"}
    assert found.pickles == ["pytorch_model.bin"] and not (tmp_path / "PWNED").exists()

    requests = len(fake_hub.requests)
    again = snapshot("acme/tiny", commit, WEIGHTS_AND_CONFIG, HubAccess.from_env(tmp_path / "cache"))
    assert again == found and len(fake_hub.requests) == requests  # a cached commit: nothing sent
    fake_hub.add("acme/tiny", {"config.json": b'{"v": 2}', "model.safetensors": b"new"})
    moved = snapshot("acme/tiny", "main", WEIGHTS_AND_CONFIG, HubAccess.from_env(tmp_path / "cache"))
    assert moved.commit != commit and (moved.folder / "model.safetensors").read_bytes() == b"new"


def test_hf_settings_are_read_when_the_download_starts(fake_hub: FakeHub, tmp_path, monkeypatch):
    fake_hub.add("acme/private", {"config.json": b"{}", "model.safetensors": b"w"}, token="hf_secret")
    cache = tmp_path / "cache"
    with pytest.raises(HubUnavailableError, match="no such repo .* needs HF_TOKEN"):
        snapshot("acme/private", None, WEIGHTS_AND_CONFIG, HubAccess.from_env(cache))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    online = snapshot("acme/private", None, WEIGHTS_AND_CONFIG, HubAccess.from_env(cache))
    assert {auth for _, path, auth in fake_hub.requests if "/resolve/" in path} == {"Bearer hf_secret"}

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sent = len(fake_hub.requests)
    assert snapshot("acme/private", None, WEIGHTS_AND_CONFIG, HubAccess.from_env(cache)) == online
    with pytest.raises(
        HubUnavailableError, match="acme/other@main: HF_HUB_OFFLINE is set and it is not in the cache"
    ):
        snapshot("acme/other", None, WEIGHTS_AND_CONFIG, HubAccess.from_env(cache))
    assert len(fake_hub.requests) == sent  # offline: not a single request

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(HubUnavailableError, match="acme/private@v9: no such revision"):
        snapshot("acme/private", "v9", WEIGHTS_AND_CONFIG, HubAccess.from_env(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(HubUnavailableError, match="hub http://127.0.0.1:9 unreachable"):
        snapshot("acme/private", "main", WEIGHTS_AND_CONFIG, HubAccess.from_env(cache))


@pytest.mark.parametrize(
    ("repo", "revision", "why"),
    [
        ("../etc", None, "not a hub repo id"),
        ("acme/../../etc", None, "not a hub repo id"),
        ("acme/a--b", None, "not a hub repo id"),
        ("acme", None, "not a hub repo id"),
        ("acme/tiny", "../../../escape", "not a valid hub revision"),
        ("acme/tiny", "refs//pr", "not a valid hub revision"),
        ("acme/tiny", "main\n", "not a valid hub revision"),
    ],
)
def test_repo_ids_and_revisions_are_checked_before_any_request(
    fake_hub: FakeHub, tmp_path, repo, revision, why
):
    with pytest.raises(HydraoptError, match=why):
        snapshot(repo, revision, WEIGHTS_AND_CONFIG, HubAccess.from_env(tmp_path))
    assert fake_hub.requests == []


def test_hf_adapters_load_like_local_ones_and_pickles_are_refused(
    fake_hub: FakeHub, peft_adapters, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # huggingface_hub's default cache
    local = peft_adapters[0]
    files = {path.name: path.read_bytes() for path in local.iterdir() if path.is_file()}
    commit = fake_hub.add(
        "acme/lora", files | {"adapter_model.bin": pickle.dumps(FileCreator(tmp_path / "PWNED"))}
    )
    from_hub = load_adapter(f"hf://acme/lora@{commit}", task="t")
    assert from_hub.sha256 == load_adapter(local).sha256 and from_hub.path.name == commit
    assert from_hub.path.is_relative_to(tmp_path / "hf-cache")
    assert set(fake_hub.fetched("acme/lora")) == {"adapter_config.json", "adapter_model.safetensors"}

    fake_hub.add(
        "acme/pickled", {"adapter_config.json": files["adapter_config.json"], "adapter_model.bin": b"x"}
    )
    with pytest.raises(UnsafeFormatError, match="only pickle-based weights"):
        load_adapter("hf://acme/pickled")
    with pytest.raises(HubUnavailableError, match="acme/nope@main: no such repo"):
        load_adapter("hf://acme/nope")
    assert "adapter_model.bin" not in fake_hub.fetched("acme/pickled") and not (tmp_path / "PWNED").exists()
