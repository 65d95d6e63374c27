"""The Prefect flows end to end: real flow runs (a Prefect test server), boto3 over HTTP to a moto
server, the registry on SQLite and on PostgreSQL, real PEFT loading of what gets published."""

import logging
from pathlib import Path

import pytest

from bench.synthetic import write_random_lora
from flows.catalog import sync_catalog
from flows.consolidate import consolidate
from flows.nightly import nightly
from registry.store.s3 import S3Store
from tests.flow_fixtures import (  # noqa: F401
    BASE_B,
    LOSSLESS,
    RANK,
    SHAPES,
    catalog_fixture,
    harness_fixture,
    sources_fixture,
    upload,
)
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    s3_bucket_fixture,
    s3_endpoint_fixture,
)

# Merge features on SQLite only: what they ask of the registry, the tests above run on both backends.
SQLITE_ONLY = pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)


def load_with_peft(store: S3Store, current: dict, base: Path, into: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    key = store.key_for(current["task_adapter_uri"])
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        store.download(f"{key}/{file}", into / file)
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), into)


def no_download(*_args, **_kwargs):
    raise AssertionError("downloaded from the store")


def test_sync_consolidate_rerun_update_and_rollback(catalog, tmp_path, monkeypatch):
    registry, store = catalog["registry"], catalog["store"]
    synced = sync_catalog()
    assert len(synced["registered"]) == 12 and synced["quarantined"] == ["broken/1"]
    (broken,) = registry.list_adapters(status="quarantined")
    assert "safetensors" in broken["quarantine_reason"]

    first = consolidate(**LOSSLESS)
    assert len(first["published"]) == 2
    tasks = [name for name in catalog["sources"]["adapters"] if name != "broken"]
    bundles = {}
    for task in tasks:
        current = registry.current_bundle(task)
        bundles[task] = current["bundle_id"]
        assert current["manifest"]["gate"]["publish"] is True
    assert set(bundles.values()) == set(first["published"])
    metrics = registry.current_bundle("alpha")["manifest"]["metrics"]["alpha"]
    assert metrics["retention"] == pytest.approx(1.0) and metrics["original"] >= 0.9
    models = catalog["sources"]["root"] / "models"
    peft_model = load_with_peft(store, registry.current_bundle("b-task-3"), models / BASE_B, tmp_path / "b3")
    assert peft_model.peft_config["default"].r == LOSSLESS["rank"]

    moves = [registry.history(task) for task in tasks]
    with monkeypatch.context() as patch:  # nothing changed: a nightly downloads nothing, moves nothing
        patch.setattr(S3Store, "download", no_download)
        again = nightly(**LOSSLESS)
    assert again["sync"]["registered"] == [] and again["sync"]["known"] == 13
    assert (again["consolidate"]["published"], again["consolidate"]["groups"]) == ([], [])
    assert again["consolidate"]["unchanged"] == 2 and [registry.history(task) for task in tasks] == moves

    new_version = write_random_lora(tmp_path / "b-task-1-v2", SHAPES, rank=RANK, seed=99, base_model=BASE_B)
    upload(store, new_version, "adapters/b-task-1/2")
    update = nightly(**LOSSLESS)
    assert update["sync"]["registered"] == ["b-task-1/2"]
    assert len(update["consolidate"]["published"]) == 1 and len(update["consolidate"]["groups"]) == 1
    for task in tasks:
        moved = registry.current_bundle(task)["bundle_id"] != bundles[task]
        assert moved == task.startswith("b-task-"), task
    assert [e["to_bundle_id"] for e in registry.history("b-task-1")][1] == bundles["b-task-1"]

    registry.rollback("b-task-1", actor="test")
    assert registry.current_bundle("b-task-1")["bundle_id"] == bundles["b-task-1"]
    assert consolidate(**LOSSLESS)["groups"] == []  # the same inputs are served: the rollback sticks
    assert registry.current_bundle("b-task-1")["bundle_id"] == bundles["b-task-1"]


def test_sync_records_compatibility_keys_and_planning_groups_by_them(catalog, monkeypatch):
    from sqlalchemy import text

    from flows.consolidate import load_member, plan_groups
    from hydraopt.formats.peft_lora import load_adapter
    from registry.db import make_engine

    registry, folders = catalog["registry"], catalog["sources"]["adapters"]
    sync_catalog()
    rows = registry.list_adapters(status="active")
    for row in rows:  # recorded at registration: the loaded adapter's own digest
        assert row["modules_digest"] == load_adapter(folders[row["name"]]).compat_key().modules_digest
    by_key: dict = {}  # how planning grouped before: by the compatibility key of the loaded adapters
    for row in rows:
        by_key.setdefault(load_member(row, folders[row["name"]]).compat_key(), []).append(row["name"])
    loaded = sorted(sorted(names) for names in by_key.values())

    def no_download(*_args):
        raise AssertionError("planning downloaded an adapter whose key is recorded")

    with monkeypatch.context() as patch:
        patch.setattr("flows.consolidate.fetch", no_download)
        groups = plan_groups(None)
    assert sorted(sorted(row["name"] for row in group) for group in groups.values()) == loaded

    engine = make_engine(catalog["db_url"])
    with engine.begin() as connection:  # as versions registered before migration 0003 are
        connection.execute(text("UPDATE adapters SET modules_digest = NULL WHERE name LIKE 'b-task-%'"))
    engine.dispose()
    assert plan_groups(None) == groups  # each digest computed once from its adapter and recorded
    assert registry.list_adapters(status="active") == rows


def test_inspect_refuses_names_that_cannot_be_task_folders(sources):
    from flows.catalog import AdapterFolder, read_folder
    from flows.settings import FlowSettings
    from hydraopt.errors import HydraoptError

    local = sources["adapters"]["b-task-0"]
    folder = AdapterFolder(
        "b task 0", "1", "adapters/b task 0/1", ("adapter_config.json", "adapter_model.safetensors")
    )
    with pytest.raises(HydraoptError, match="not a safe folder name"):
        read_folder(folder, local, FlowSettings.from_env())


def test_sync_quarantines_the_bad_input_corpus_and_still_registers_the_rest(
    catalog, s3_bucket, s3_endpoint, tmp_path
):
    import boto3

    from bench.bad_inputs import BAD_KEYS, refusal_matches, write_bad_adapters

    registry, store = catalog["registry"], catalog["store"]
    marker = tmp_path / "PWNED"
    cases = write_bad_adapters(catalog["sources"]["adapters"]["b-task-0"], tmp_path / "bad", marker)
    for case, (folder, _) in cases.items():
        upload(store, folder, f"adapters/bad-{case}/1")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in BAD_KEYS:  # our store refuses to write these; a careless producer might not
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"{}")

    synced = sync_catalog()
    assert len(synced["registered"]) == 12
    assert sorted(synced["quarantined"]) == sorted(["broken/1", *(f"bad-{case}/1" for case in cases)])
    listed = [
        key for key in BAD_KEYS if key.startswith("adapters/")
    ]  # "/adapters/..." is not under the prefix
    assert len(synced["refused_keys"]) == len(listed)
    reasons = {a["name"]: a["quarantine_reason"] for a in registry.list_adapters(status="quarantined")}
    for case, (_, words) in cases.items():
        assert refusal_matches(reasons[f"bad-{case}"], words), (case, reasons[f"bad-{case}"])
    assert not marker.exists()


def test_folders_are_named_from_the_prefix_folder():
    from flows.catalog import find_adapter_folders

    keys = ["adapters/b-task-0/1/adapter_config.json", "adapters/b-task-0/1/adapter_model.safetensors",
            "adapters/b-x/2/eval.jsonl", "adapters/b-x/2/extra/deep.txt"]  # fmt: skip
    folders, refused = find_adapter_folders(keys, "adapters/b-")
    assert [(f.name, f.version, f.key, f.files) for f in folders] == [
        ("b-task-0", "1", "adapters/b-task-0/1", ("adapter_config.json", "adapter_model.safetensors")),
        ("b-x", "2", "adapters/b-x/2", ("eval.jsonl",)),
    ]
    assert len(refused) == 1 and "expected adapters/<name>/<version>/<file>" in refused[0]


def test_a_folder_still_uploading_is_left_for_the_next_sync(catalog):
    registry, store = catalog["registry"], catalog["store"]
    folder = catalog["sources"]["adapters"]["b-task-1"]
    store.put_file("adapters/late/1/adapter_config.json", folder / "adapter_config.json")
    synced = sync_catalog()
    assert synced["incomplete"] == ["late/1"] and "late/1" not in synced["quarantined"]
    assert registry.list_adapters(name="late") == []
    store.put_file("adapters/late/1/adapter_model.safetensors", folder / "adapter_model.safetensors")
    again = sync_catalog()
    assert (again["registered"], again["incomplete"]) == (["late/1"], [])


@SQLITE_ONLY
def test_a_group_with_calibration_rows_is_refined_and_passes_where_the_closed_form_fails(catalog):
    registry = catalog["registry"]
    trained = ["alpha", "beta", "gamma"]  # their eval.jsonl holds train rows as well as eval rows
    for name in trained:
        sync_catalog(prefix=f"adapters/{name}")
    (closed,) = consolidate(rank=1, refine=False)["groups"]  # r' = 1: one direction for three tasks
    assert closed["status"] == "gate failed" and closed["refined"] is False
    assert "alpha" in [row["task"] for row in closed["tasks"] if not row["passed"]]

    (refined,) = consolidate(rank=1)["groups"]
    assert refined["status"] == "published" and refined["refined"] is True
    assert all(row["passed"] and row["metric"] == "exact_match" for row in refined["tasks"])
    manifest = registry.current_bundle("alpha")["manifest"]
    assert manifest["consolidate"] == {"method": "hydraopt", "params": {"rank": 1}, "refine": True}
    assert manifest["params"]["refine"] == {"iterations": 8, "ridge": 0.01}
    assert consolidate(rank=1)["published"] == []  # same inputs, same request: unchanged


@SQLITE_ONLY
def test_distillation_is_asked_per_run_recorded_in_the_manifest_and_changes_the_request(catalog, caplog):
    registry = catalog["registry"]
    for name in ["alpha", "beta", "gamma"]:
        sync_catalog(prefix=f"adapters/{name}")
    with caplog.at_level(logging.INFO):
        (group,) = consolidate(rank=2, distill_steps=3)["groups"]
    assert group["status"] == "published" and group["refined"] is True
    assert [f"distill step {i}/3" in caplog.text for i in (1, 2, 3)] == [True] * 3
    manifest = registry.current_bundle("alpha")["manifest"]
    assert manifest["consolidate"] == {
        "method": "hydraopt",
        "params": {"rank": 2},
        "refine": True,
        "distill_steps": 3,
    }
    record = manifest["params"]["distill"]
    assert record["steps"] == 3 and record["examples"] == 64 and record["kept"] == group["distilled"]
    assert record["kept"] == (record["kl_after"] < record["kl_before"])
    assert consolidate(rank=2, distill_steps=3)["published"] == []  # same request: unchanged
    assert len(consolidate(rank=2)["published"]) == 1  # without distillation: a different request
    assert "distill" not in registry.current_bundle("alpha")["manifest"]["params"]


def test_chat_eval_rows_on_a_base_model_without_a_chat_template_are_quarantined(catalog, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(catalog["sources"]["adapters"]["alpha"], tmp_path / "chatty")
    messages = [{"role": "user", "content": "the quick alpha"}]
    row = {"messages": messages, "answer": " apple", "metric": "exact_match"}
    (folder / "eval.jsonl").write_text(json.dumps(row) + "\n")
    upload(catalog["store"], folder, "adapters/chatty/1")
    synced = sync_catalog()
    assert "chatty/1" in synced["quarantined"] and "alpha/1" in synced["registered"]
    (quarantined,) = catalog["registry"].list_adapters(name="chatty")
    assert "gives chat messages" in quarantined["quarantine_reason"]
    assert "no chat template" in quarantined["quarantine_reason"]
