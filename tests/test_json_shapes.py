"""One JSON shape per concept (README.md, "JSON shapes"): the Python API, the CLI and HTTP return
the same dicts for the same bundle; storage and per-task results have one shape each."""

import argparse
import json
from dataclasses import fields

import pytest
from fastapi.testclient import TestClient

from registry.api import Registry
from registry.http import create_app
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    registry_fixture,
    run_registry_cli,
    seed,
)

TASKS = ["sst2", "agnews"]
ADAPTER_REF = {"id", "name", "version", "sha256"}
CURRENT = {
    "task", "alias", "bundle_id", "bundle_uri", "base_model", "head", "adapter", "task_adapter_uri",
    "updated_at", "manifest",
}  # fmt: skip
BUNDLE = {"bundle_id", "base_model", "bundle_uri", "created_at", "members", "metrics", "manifest"}


@pytest.fixture
def client(registry: Registry) -> TestClient:
    seed(registry, ["b1"], TASKS)
    for task in TASKS:
        registry.move_alias(task, "b1", reason="publish", actor="flow")
    return TestClient(create_app(registry, None))


def test_the_current_bundle_is_one_shape_on_every_surface(
    client: TestClient, registry: Registry, db_url: str, capsys
):
    for task in TASKS:
        python = registry.current_bundle(task)
        code, out, _ = run_registry_cli(
            capsys, "registry", "current", "--task", task, "--json", "--database-url", db_url
        )
        assert code == 0
        assert json.loads(out) == python == client.get(f"/v1/tasks/{task}/bundle").json()
        assert set(python) == CURRENT and set(python["adapter"]) == ADAPTER_REF


def test_a_bundle_carries_its_location_and_members_once(client: TestClient, registry: Registry):
    bundle = registry.get_bundle("b1")
    assert client.get("/v1/bundles/b1").json() == bundle
    assert set(bundle) == BUNDLE and "members" not in bundle["manifest"]
    for task in TASKS:
        current = registry.current_bundle(task)
        (member,) = [m for m in bundle["members"] if m["task"] == task]
        assert member == {"task": task, "head": current["head"], "adapter": current["adapter"]}
        assert current["bundle_uri"] == bundle["bundle_uri"] == "file:///bundles/b1"
        assert current["task_adapter_uri"] == f"{bundle['bundle_uri']}/tasks/{task}"


def test_merge_prints_the_manifest_storage_and_task_rows(peft_adapters, tmp_path, capsys):
    from hydraopt.cli import add_merge_command
    from hydraopt.formats.bundle import read_bundle, task_rows
    from hydraopt.formats.layout import BUNDLE_TENSORS_FILE
    from hydraopt.storage import Storage

    parser = argparse.ArgumentParser()
    add_merge_command(parser.add_subparsers())
    out = tmp_path / "b"
    args = parser.parse_args(["merge", "--rank", "4", "--out", str(out), *map(str, peft_adapters[:2])])
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = read_bundle(out).manifest

    assert summary["bundle_uri"] == out.resolve().as_uri()
    assert summary["storage"] == manifest["storage"]
    assert set(manifest["storage"]) == {field.name for field in fields(Storage)} | {"ratio"}
    assert manifest["storage"]["bundle_file_bytes"] == (out / BUNDLE_TENSORS_FILE).stat().st_size
    heads = {member["task"]: member["head"] for member in manifest["members"]}
    assert summary["tasks"] == task_rows(heads, manifest["metrics"])
    assert [set(row) for row in summary["tasks"]] == [{"task", "head", "relative_error"}] * 2
