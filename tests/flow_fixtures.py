"""Fixtures of the flow tests: a Prefect test server per module, two base models and 12 adapters (plus
one corrupt folder) uploaded to a moto bucket, the registry on SQLite and on PostgreSQL.

Test modules import what they use (`from tests.flow_fixtures import catalog_fixture`); each fixture
is registered under its name without `_fixture`.
"""

import shutil
from pathlib import Path

import pytest

from bench.synthetic import llama_attention_shapes, write_random_lora
from flows.prefect_setup import temporary_server
from flows.settings import FlowSettings
from hydraopt.evaluation.suite import write_task_jsonl
from registry.api import Registry
from registry.db import make_engine
from registry.store.s3 import S3Store

BASE_A, BASE_B = "tiny-lm", "tiny-lm-b"
RANK = 4
LOSSLESS = {"rank": 6 * RANK}  # K = N heads and r' = Σ r_i: the merge is exact, every gate passes
SHAPES = llama_attention_shapes(layers=2, hidden=64, kv_out=32)


@pytest.fixture(scope="module", name="harness")
def harness_fixture(tmp_path_factory):
    """A real Prefect server subprocess, the API of this module's flows, on a new database (a copy of
    the migrated template in PREFECT_HOME)."""
    with temporary_server(tmp_path_factory.mktemp("prefect") / "prefect.db"):
        yield


@pytest.fixture(scope="module", name="sources")
def sources_fixture(tmp_path_factory, tiny_lm, tiny_task_adapters, tiny_tasks) -> dict:
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


@pytest.fixture(name="catalog")
def catalog_fixture(db_url, s3_bucket, s3_endpoint, sources, tmp_path, monkeypatch, harness) -> dict:
    """HYDRACAT_* settings for this test: its database, its bucket, the two base models."""
    settings = FlowSettings.in_folder(
        tmp_path, sources["root"] / "models", database_url=db_url, s3_bucket=s3_bucket,
        s3_endpoint_url=s3_endpoint,
    )  # fmt: skip
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(s3_bucket, "", endpoint_url=s3_endpoint)
    for name, folder in sources["adapters"].items():
        upload(store, folder, f"adapters/{name}/1")
    engine = make_engine(db_url)
    yield {"store": store, "registry": Registry(engine, store), "sources": sources, "db_url": db_url}
    engine.dispose()


def upload(store: S3Store, folder: Path, key: str) -> None:
    for path in sorted(folder.iterdir()):
        store.put_file(f"{key}/{path.name}", path)
