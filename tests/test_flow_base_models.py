"""Base models named the way users name them, in real flow runs (Prefect test server, moto S3 over
HTTP, the registry on SQLite and PostgreSQL) against a fake hub on loopback through the real
huggingface_hub client: hub ids, trainer paths aliased to them, object-store folders, hf:// adapters,
and the adapters that wait (pending, with the reason) until their base model can be had."""

import json
import pickle
import shutil
from pathlib import Path

import pytest

from bench.bad_inputs import FileCreator
from bench.synthetic import write_random_lora
from flows.catalog import sync_catalog
from flows.cli import main as hydracat
from flows.consolidate import consolidate
from tests.fake_hub import FakeHub
from tests.flow_fixtures import (  # noqa: F401
    LOSSLESS,
    RANK,
    SHAPES,
    catalog_fixture,
    harness_fixture,
    sources_fixture,
    upload,
)
from tests.hub_fixtures import fake_hub_fixture  # noqa: F401
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    s3_bucket_fixture,
    s3_endpoint_fixture,
)
from tests.team_fixtures import HUB_BASE as TEAM_BASE

HUB_BASE = "acme/tiny-lm"


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """An empty HYDRACAT_MODELS_DIR for this test: every base model comes from the hub or the store."""
    folder = tmp_path / "models"
    monkeypatch.setenv("HYDRACAT_MODELS_DIR", str(folder))
    return folder


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(FileCreator(marker))


def serve_base(hub: FakeHub, base: Path, marker: Path, repo: str = HUB_BASE) -> str:
    """The tiny LM as a hub repo, beside a pickle and files hydracat must never ask for."""
    files = {path.name: path.read_bytes() for path in base.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    extra = {"pytorch_model.bin": pickle_payload(marker), "training_args.bin": pickle_payload(marker),
             "README.md": b"# tiny", ".gitattributes": b"*.bin filter=lfs"}  # fmt: skip
    return hub.add(repo, files | extra)


def random_adapter(root: Path, name: str, base_model: str, seed: int) -> Path:
    return write_random_lora(root / name, SHAPES, rank=RANK, seed=seed, base_model=base_model)


def renamed_base(folder: Path, out: Path, base_model: str) -> Path:
    """A copy of an adapter folder whose config names another base model."""
    copy = shutil.copytree(folder, out)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": base_model}))
    return copy


def sync_artifact(state) -> list[dict]:
    """The table artifact of a sync-catalog run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["sync-catalog"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    return json.loads(artifact.data)


def cli(capsys, *argv: str) -> str:
    assert hydracat(list(argv)) == 0
    return capsys.readouterr().out


def test_hub_ids_aliased_paths_and_store_folders_resolve_group_and_consolidate(
    catalog, fake_hub, models_dir, tmp_path, capsys
):
    registry, store = catalog["registry"], catalog["store"]
    sources = catalog["sources"]
    base = sources["root"] / "models" / "tiny-lm"
    marker = tmp_path / "PWNED"
    commit = serve_base(fake_hub, base, marker)
    lora = random_adapter(tmp_path, "lora-e", HUB_BASE, seed=31)
    lora_files = {path.name: path.read_bytes() for path in lora.iterdir()}
    lora_commit = fake_hub.add("acme/lora-e", lora_files | {"adapter_model.bin": pickle_payload(marker)})
    upload(
        store,
        renamed_base(sources["adapters"]["alpha"], tmp_path / "hub-alpha", HUB_BASE),
        "hubcat/hub-alpha/1",
    )
    upload(store, random_adapter(tmp_path, "hub-b", HUB_BASE, seed=32), "hubcat/hub-b/1")
    upload(store, random_adapter(tmp_path, "alice-c", "/home/alice/ckpt/base", seed=33), "hubcat/alice-c/1")
    upload(store, random_adapter(tmp_path, "dave-d", "tiny-lm-d", seed=34), "hubcat/dave-d/1")
    store.put_bytes("hubcat/hub-lora/1/source.json", json.dumps({"uri": "hf://acme/lora-e"}).encode())

    state = sync_catalog(prefix="hubcat/", return_state=True)
    first = state.result()
    assert first["registered"] == ["hub-alpha/1", "hub-b/1", "hub-lora/1"]
    assert first["pending"] == ["alice-c/1", "dave-d/1"]
    why = first["pending_reasons"]["alice-c/1"]
    assert "'/home/alice/ckpt/base' is unknown" in why and "hydracat registry base-model alias" in why
    assert "'tiny-lm-d' is unknown" in first["pending_reasons"]["dave-d/1"]
    table = {row["name"]: row for row in sync_artifact(state)}
    assert (table["alice-c"]["status"], table["alice-c"]["reason"]) == ("pending", why)
    rows = {row["name"]: row for row in registry.list_adapters()}
    assert rows["hub-alpha"]["base_model"] == {"name": HUB_BASE, "revision": commit}  # pinned
    assert rows["hub-lora"]["uri"] == f"hf://acme/lora-e@{lora_commit}"
    assert rows["alice-c"]["base_model"] == {"name": "/home/alice/ckpt/base", "revision": None}
    pinned = registry.find_base_model(HUB_BASE)
    assert (pinned["kind"], pinned["location"], pinned["revision"]) == ("hub", HUB_BASE, commit)
    pending = cli(capsys, "registry", "list", "--status", "pending").splitlines()
    assert [line.split("  ")[:3] for line in pending] == [
        ["alice-c", "1", "pending"],
        ["dave-d", "1", "pending"],
    ]
    assert pending[0].endswith(why)

    # the operator says what those names are: an alias of the hub model, and a folder in the bucket
    cli(capsys, "registry", "base-model", "alias", "/home/alice/ckpt/base", HUB_BASE)
    upload(store, base, "base-models/tiny-lm-d")
    store.put_bytes("base-models/tiny-lm-d/pytorch_model.bin", pickle_payload(marker))
    uri = store.uri_for("base-models/tiny-lm-d")
    cli(capsys, "registry", "base-model", "add", "tiny-lm-d", "--uri", uri)
    second = sync_catalog(prefix="hubcat/")
    assert (second["registered"], second["pending"], second["known"]) == (["alice-c/1", "dave-d/1"], [], 3)
    rows = {row["name"]: row for row in registry.list_adapters()}
    assert rows["alice-c"]["base_model"] == {"name": HUB_BASE, "revision": commit}
    assert rows["dave-d"]["base_model"] == {"name": "tiny-lm-d", "revision": None}
    assert sync_catalog(prefix="hubcat/")["known"] == 5  # nothing left to look at

    published = consolidate(**LOSSLESS)
    groups = {tuple(sorted(row["task"] for row in group["tasks"])): group for group in published["groups"]}
    assert set(groups) == {("alice-c", "hub-alpha", "hub-b", "hub-lora"), ("dave-d",)}
    assert {group["status"] for group in groups.values()} == {"published"}
    hub_group = groups[("alice-c", "hub-alpha", "hub-b", "hub-lora")]["tasks"]
    (alpha,) = [row for row in hub_group if row["task"] == "hub-alpha"]  # evaluated on the hub's base model:
    assert alpha["metric"] == "exact_match" and alpha["original"] >= 0.9 and alpha["passed"]
    current = registry.current_bundle("alice-c")
    assert current["base_model"] == {"name": HUB_BASE, "revision": commit}
    assert current["manifest"]["base_model"] == {"name": HUB_BASE, "revision": commit}
    config = json.loads(store.get_bytes(f"{store.key_for(current['task_adapter_uri'])}/adapter_config.json"))
    assert (config["base_model_name_or_path"], config["revision"]) == (HUB_BASE, commit)
    assert registry.current_bundle("dave-d")["base_model"]["name"] == "tiny-lm-d"

    weights = [
        path for method, path, _ in fake_hub.requests if method == "GET" and "/model.safetensors" in path
    ]
    assert len(weights) == 1  # downloaded once, into the models cache
    assert set(fake_hub.fetched(HUB_BASE)) == {path.name for path in base.iterdir()}  # not a .bin, no README
    assert set(fake_hub.fetched("acme/lora-e")) == {"adapter_config.json", "adapter_model.safetensors"}
    assert not [path for path in models_dir.rglob("*") if path.name.endswith(".bin")]
    assert not marker.exists()


def test_offline_missing_or_pickled_hub_models_leave_adapters_pending_with_the_reason(
    catalog, fake_hub, models_dir, tmp_path, monkeypatch
):
    registry, store = catalog["registry"], catalog["store"]
    marker = tmp_path / "PWNED"
    commit = serve_base(fake_hub, catalog["sources"]["root"] / "models" / "tiny-lm", marker)
    fake_hub.add("acme/pickled", {"config.json": b"{}", "pytorch_model.bin": pickle_payload(marker)})
    for name, base_model in [("off-a", HUB_BASE), ("pick-b", "acme/pickled"), ("gone-c", "acme/missing")]:
        upload(store, random_adapter(tmp_path, name, base_model, seed=len(name)), f"hubcat/{name}/1")
    lora = random_adapter(tmp_path, "lora-repo", HUB_BASE, seed=42)
    lora_commit = fake_hub.add("acme/lora-f", {path.name: path.read_bytes() for path in lora.iterdir()})
    config = (lora / "adapter_config.json").read_bytes()
    fake_hub.add(
        "acme/lora-pkl", {"adapter_config.json": config, "adapter_model.bin": pickle_payload(marker)}
    )
    for name, repo in [("lora-f", "acme/lora-f"), ("lora-pkl", "acme/lora-pkl")]:
        store.put_bytes(f"hubcat/{name}/1/source.json", json.dumps({"uri": f"hf://{repo}"}).encode())

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: honoured all the same
    offline = sync_catalog(prefix="hubcat/")
    assert offline["pending"] == ["gone-c/1", "lora-f/1", "lora-pkl/1", "off-a/1", "pick-b/1"]
    assert "HF_HUB_OFFLINE is set and it is not in the cache" in offline["pending_reasons"]["off-a/1"]
    assert offline["pending_reasons"]["lora-f/1"].startswith("adapter repo acme/lora-f@main: HF_HUB_OFFLINE")
    assert not [
        path for _, path, _ in fake_hub.requests if path.startswith("/api/models/") or "/resolve/" in path
    ]

    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = sync_catalog(prefix="hubcat/")
    assert (online["registered"], online["pending"]) == (["lora-f/1", "off-a/1"], ["gone-c/1", "pick-b/1"])
    assert online["quarantined"] == ["lora-pkl/1"]
    (hub_lora,) = registry.list_adapters(name="lora-f")  # the placeholder was replaced by the real adapter
    assert hub_lora["uri"] == f"hf://acme/lora-f@{lora_commit}" and hub_lora["base_model"]["name"] == HUB_BASE
    (pickled,) = registry.list_adapters(name="lora-pkl")
    assert "only pickle-based weights (adapter_model.bin)" in pickled["quarantine_reason"]
    reasons = {row["name"]: row["pending_reason"] for row in registry.list_adapters(status="pending")}
    assert (
        "acme/missing@main: no such repo" in reasons["gone-c"]
    )  # the registry's reason was brought up to date
    assert "only pickle weights (pytorch_model.bin)" in reasons["pick-b"]
    assert fake_hub.fetched("acme/pickled") == ["config.json"] * 2  # HEAD and GET; never the pickle
    assert fake_hub.fetched("acme/lora-pkl") == ["adapter_config.json"] * 2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the pinned commit is in the cache now: offline works
    upload(store, random_adapter(tmp_path, "off-d", HUB_BASE, seed=41), "hubcat/off-d/1")
    sent = len(fake_hub.requests)
    again = sync_catalog(prefix="hubcat/")
    assert again["registered"] == ["off-d/1"] and len(fake_hub.requests) == sent
    assert registry.list_adapters(name="off-d")[0]["base_model"] == {"name": HUB_BASE, "revision": commit}

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    unreachable = sync_catalog(prefix="hubcat/")
    assert "hub http://127.0.0.1:9 unreachable" in unreachable["pending_reasons"]["gone-c/1"]
    assert not marker.exists()


def test_a_teams_adapters_on_a_hub_base_model_go_through_sync_consolidate_and_current(
    catalog, fake_hub, chatml_lm, team, tmp_path, monkeypatch, capsys
):
    """README's "bring your own adapters": the team's folders as they are, the base model from the hub."""
    monkeypatch.setenv("HYDRACAT_MODELS_DIR", str(tmp_path / "models"))  # nothing installed by hand
    fake_hub.add(TEAM_BASE, chatml_lm[2])
    for name, (folder, _) in team.items():
        upload(catalog["store"], folder, f"team/{name}/1")
    assert sync_catalog(prefix="team/")["registered"] == ["fruit/1", "mood/1", "ticket/1"]
    result = consolidate(base_model=TEAM_BASE, rank=24)  # K = N, r' = Σ r_i: exact, so every gate passes
    (group,) = result["groups"]
    assert group["status"] == "published" and group["refined"]
    rows = {row["task"]: row for row in group["tasks"]}
    for name in team:  # scored on the team's own prompts: each original is right on its rows
        assert rows[name]["metric"] == "exact_match" and rows[name]["original"] >= 0.9, rows[name]
        assert rows[name]["passed"] and rows[name]["retention"] >= 0.97
    assert hydracat(["registry", "current", "--task", "ticket"]) == 0
    answer = capsys.readouterr().out
    assert f"bundle:     {group['bundle_id']}" in answer and f"base model: {TEAM_BASE}" in answer
