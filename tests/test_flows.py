"""The Prefect flows end to end: real flow runs (prefect_test_harness), boto3 over HTTP to a moto
server, the registry on SQLite and on PostgreSQL, real PEFT loading of what gets published."""

import shutil
from pathlib import Path

import pytest

from flows.catalog import sync_catalog
from flows.consolidate import consolidate
from flows.nightly import nightly
from flows.synthetic import llama_attention_shapes, write_random_lora
from hydraopt.evaluation.suite import write_task_jsonl
from registry.api import Registry
from registry.db import make_engine
from registry.errors import NotFoundError
from registry.store.s3 import S3Store
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    s3_bucket_fixture,
    s3_endpoint_fixture,
)

BASE_A, BASE_B = "tiny-lm", "tiny-lm-b"
RANK = 4
LOSSLESS = {"rank": 6 * RANK}  # K = N heads and r' = Σ r_i: the merge is exact, every gate passes
SHAPES = llama_attention_shapes(layers=2, hidden=64, kv_out=32)


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_lm, tiny_task_adapters, tiny_tasks) -> dict:
    """Local folders: two base models (same tiny LM, two names), 12 adapters, one corrupt folder."""
    root = tmp_path_factory.mktemp("flow-sources")
    model, tokenizer = tiny_lm
    for base in (BASE_A, BASE_B):
        shutil.copytree(model.name_or_path, root / "models" / base)
    adapters = {}
    for path, task in zip(tiny_task_adapters, tiny_tasks, strict=True):  # trained, with eval sets
        folder = shutil.copytree(path, root / "adapters" / task.name)
        write_task_jsonl(folder / "eval.jsonl", task)
        adapters[task.name] = folder
    for i in range(3):
        name = f"a-random-{i}"
        adapters[name] = write_random_lora(
            root / "adapters" / name, SHAPES, rank=RANK, seed=10 + i, base_model=BASE_A
        )
    for i in range(6):
        name = f"b-task-{i}"
        adapters[name] = write_random_lora(
            root / "adapters" / name, SHAPES, rank=RANK, seed=20 + i, base_model=BASE_B
        )
    broken = shutil.copytree(adapters["b-task-0"], root / "adapters" / "broken")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    adapters["broken"] = broken
    return {"root": root, "adapters": adapters}


@pytest.fixture
def catalog(db_url, s3_bucket, s3_endpoint, sources, tmp_path, monkeypatch, harness) -> dict:
    """HYDRACAT_* settings for this test: its database, its bucket, the two base models."""
    for name, value in {
        "HYDRACAT_DATABASE_URL": db_url,
        "HYDRACAT_S3_BUCKET": s3_bucket,
        "HYDRACAT_S3_ENDPOINT_URL": s3_endpoint,
        "HYDRACAT_MODELS_DIR": str(sources["root"] / "models"),
        "HYDRACAT_WORK_DIR": str(tmp_path / "work"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HYDRACAT_STORE_URL", raising=False)
    store = S3Store(s3_bucket, "", endpoint_url=s3_endpoint)
    for name, folder in sources["adapters"].items():
        upload(store, folder, f"adapters/{name}/1")
    engine = make_engine(db_url)
    yield {"store": store, "registry": Registry(engine, store), "sources": sources}
    engine.dispose()


def upload(store: S3Store, folder: Path, key: str) -> None:
    for path in sorted(folder.iterdir()):
        store.put_file(f"{key}/{path.name}", path)


def load_with_peft(store: S3Store, current: dict, base: Path, into: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    key = store.key_for(current["task_adapter_uri"])
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        store.download(f"{key}/{file}", into / file)
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), into)


def test_sync_consolidate_rerun_update_and_rollback(catalog, tmp_path):
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
    assert metrics["retention"] == pytest.approx(1.0) and metrics["original_value"] >= 0.9
    models = catalog["sources"]["root"] / "models"
    peft_model = load_with_peft(store, registry.current_bundle("b-task-3"), models / BASE_B, tmp_path / "b3")
    assert peft_model.peft_config["default"].r == LOSSLESS["rank"]

    again = consolidate(**LOSSLESS)
    assert again["published"] == [] and {g["status"] for g in again["groups"]} == {"unchanged"}

    new_version = write_random_lora(tmp_path / "b-task-1-v2", SHAPES, rank=RANK, seed=99, base_model=BASE_B)
    upload(store, new_version, "adapters/b-task-1/2")
    update = nightly(**LOSSLESS)
    assert update["sync"]["registered"] == ["b-task-1/2"]
    assert len(update["consolidate"]["published"]) == 1
    for task in tasks:
        moved = registry.current_bundle(task)["bundle_id"] != bundles[task]
        assert moved == task.startswith("b-task-"), task
    assert [e["to_bundle_id"] for e in registry.history("b-task-1")][1] == bundles["b-task-1"]

    registry.rollback("b-task-1", actor="test")
    assert registry.current_bundle("b-task-1")["bundle_id"] == bundles["b-task-1"]
    consolidate(**LOSSLESS)  # re-merges the same inputs, but the rollback sticks
    assert registry.current_bundle("b-task-1")["bundle_id"] == bundles["b-task-1"]


def test_a_failure_between_upload_and_commit_leaves_nothing_visible(catalog, monkeypatch):
    registry, store = catalog["registry"], catalog["store"]
    sync_catalog()

    def fail(*_args, **_kwargs):
        raise RuntimeError("injected: crash before the registry commit")

    with monkeypatch.context() as patch:
        patch.setattr(Registry, "publish_bundle", fail)
        state = consolidate(base_model=BASE_B, return_state=True, **LOSSLESS)
    assert state.is_failed()
    assert list(store.list("bundles/"))  # the objects were written ...
    with pytest.raises(NotFoundError):  # ... but no row and no alias points at them
        registry.current_bundle("b-task-0")

    rerun = consolidate(base_model=BASE_B, **LOSSLESS)
    assert len(rerun["published"]) == 1
    assert registry.current_bundle("b-task-0")["bundle_id"] == rerun["published"][0]


def test_inspect_refuses_names_that_cannot_be_task_folders(sources):
    from flows.catalog import AdapterFolder, inspect_folder
    from hydraopt.errors import HydraoptError

    local = sources["adapters"]["b-task-0"]
    folder = AdapterFolder(
        "b task 0", "1", "adapters/b task 0/1", ("adapter_config.json", "adapter_model.safetensors")
    )
    with pytest.raises(HydraoptError, match="not a safe folder name"):
        inspect_folder(folder, local)


def test_sync_quarantines_the_bad_input_corpus_and_still_registers_the_rest(
    catalog, s3_bucket, s3_endpoint, tmp_path
):
    import boto3

    from flows.bench.bad_inputs import BAD_KEYS, refusal_matches, write_bad_adapters

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


def test_transient_s3_errors_are_retried_and_a_lasting_outage_fails_cleanly(catalog, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    registry = catalog["registry"]
    sync_catalog(prefix="adapters/b-")
    real_put = S3Store.put_file
    calls = {"n": 0, "fail_first": 2}

    def flaky_put(self, key, path, sha256=None):
        calls["n"] += 1
        if key.startswith("bundles/") and calls["n"] <= calls["fail_first"]:
            raise EndpointConnectionError(endpoint_url="http://s3.invalid")
        return real_put(self, key, path, sha256)

    with monkeypatch.context() as patch:
        patch.setattr(S3Store, "put_file", flaky_put)
        calls["fail_first"] = 10**9  # the store is down for good: retries run out, nothing is published
        state = consolidate(return_state=True, **LOSSLESS)
        assert state.is_failed() and calls["n"] == 4  # the first upload, tried 1 + 3 times
        with pytest.raises(NotFoundError):
            registry.current_bundle("b-task-0")
        calls.update(n=0, fail_first=2)  # two transient failures, then the store answers
        published = consolidate(**LOSSLESS)["published"]
    assert len(published) == 1 and registry.current_bundle("b-task-0")["bundle_id"] == published[0]


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


def test_a_dropped_database_connection_at_commit_is_retried_without_duplicates(catalog, monkeypatch):
    from sqlalchemy.exc import OperationalError

    registry = catalog["registry"]
    sync_catalog(prefix="adapters/b-")
    real_publish = Registry.publish_bundle
    calls = {"n": 0}

    def drop_first(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))
        return real_publish(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Registry, "publish_bundle", drop_first)
        (bundle_id,) = consolidate(**LOSSLESS)["published"]
    assert calls["n"] == 2
    history = registry.history("b-task-0")
    assert [event["to_bundle_id"] for event in history] == [bundle_id]


def test_a_full_disk_while_writing_the_bundle_fails_the_run_and_leaves_nothing(
    catalog, monkeypatch, tmp_path
):
    import errno

    import flows.consolidate

    registry = catalog["registry"]
    sync_catalog(prefix="adapters/b-")

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(flows.consolidate, "write_bundle", disk_full)
        state = consolidate(return_state=True, **LOSSLESS)
    assert state.is_failed()
    with pytest.raises(NotFoundError):
        registry.current_bundle("b-task-0")
    assert not list(catalog["store"].list("bundles/"))
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith("hydracat-bundle-")]
    assert len(consolidate(**LOSSLESS)["published"]) == 1  # space is back: the rerun publishes
