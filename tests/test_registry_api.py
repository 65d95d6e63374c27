"""Registry Python API on SQLite and PostgreSQL: adapters, bundles, aliases, rollback."""

import json
from datetime import UTC, datetime

import pytest

from registry.api import Registry
from registry.db import make_engine
from registry.errors import (
    AdapterNotFoundError,
    AliasNotSetError,
    BundleNotFoundError,
    ConflictError,
    InvalidRequestError,
    TaskNotFoundError,
)
from registry.store import LocalStore
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    manifest,
    registry_fixture,
    seed,
    sha_of,
)

TASKS = ["sst2", "agnews"]


def test_register_adapter_is_idempotent_by_sha256(registry: Registry):
    first = registry.register_adapter_version(
        "a", "1", sha256="ab" * 32, uri="s3://b/a/1", base_model="m", rank=4, alpha=8.0
    )
    again = registry.register_adapter_version("a", "1", sha256="ab" * 32, uri="s3://b/a/1", base_model="m")
    assert again == first
    assert first["status"] == "active" and first["base_model"] == {"name": "m", "revision": None}
    with pytest.raises(ConflictError, match="a 1 is registered with sha256 abab"):
        registry.register_adapter_version("a", "1", sha256="cd" * 32, uri="x", base_model="m")


def test_list_adapters_filters_and_retire(registry: Registry):
    registry.register_adapter_version("a", "1", sha256="1" * 64, uri="u1", base_model="m1")
    registry.register_adapter_version("a", "2", sha256="2" * 64, uri="u2", base_model="m1")
    registry.register_adapter_version("b", "1", sha256="3" * 64, uri="u3", base_model="m2")
    registry.register_adapter_version(
        "c", "1", sha256="4" * 64, uri="u4", base_model="m2", quarantine_reason="bad shapes"
    )
    names = lambda rows: [(row["name"], row["version"]) for row in rows]  # noqa: E731
    assert names(registry.list_adapters()) == [("a", "1"), ("a", "2"), ("b", "1"), ("c", "1")]
    assert names(registry.list_adapters(base_model="m1")) == [("a", "1"), ("a", "2")]
    assert names(registry.list_adapters(name="b")) == [("b", "1")]
    quarantined = registry.list_adapters(status="quarantined")
    assert names(quarantined) == [("c", "1")] and quarantined[0]["quarantine_reason"] == "bad shapes"

    assert registry.retire_adapter("a", "1")["status"] == "retired"
    assert names(registry.list_adapters(base_model="m1", status="active")) == [("a", "2")]
    with pytest.raises(AdapterNotFoundError, match="a 9"):
        registry.retire_adapter("a", "9")
    with pytest.raises(InvalidRequestError, match="status must be one of"):
        registry.list_adapters(status="gone")


def test_compatible_groups_group_the_newest_active_versions_by_recorded_key(registry: Registry):
    digest_1, digest_2 = "d1" * 32, "d2" * 32
    for name, version, base, revision, digest in [
        ("a", "1", "m", "main", digest_2),  # a's older version: only its newest counts
        ("a", "2", "m", "main", digest_1),
        ("b", "1", "m", "main", digest_1),
        ("c", "1", "m", "main", digest_2),
        ("d", "1", "m", "v2", digest_1),  # another revision
        ("e", "1", "m2", None, digest_1),  # another base model
    ]:
        registry.register_adapter_version(
            name, version, sha256=f"{name}{version}".ljust(64, "0"), uri="u", base_model=base,
            base_revision=revision, modules_digest=digest,
        )  # fmt: skip
    registry.register_adapter_version(
        "f", "1", sha256="f" * 64, uri="u", base_model="m", base_revision="main", adapter_type="vera",
        modules_digest=digest_1,
    )  # fmt: skip
    registry.register_adapter_version("g", "1", sha256="9" * 64, uri="u", base_model="m", pending_reason="x")
    registry.register_adapter_version(
        "h", "1", sha256="8" * 64, uri="u", base_model="m", base_revision="main", modules_digest=digest_1
    )
    registry.retire_adapter("h", "1")

    def shape(groups: list[dict]) -> list[tuple]:
        return [
            (g["base_model"]["name"], g["base_model"]["revision"], g["adapter_type"], g["modules_digest"],
             [(a["name"], a["version"]) for a in g["adapters"]])
            for g in groups
        ]  # fmt: skip

    assert shape(registry.compatible_groups()) == [
        ("m", "main", "lora", digest_1, [("a", "2"), ("b", "1")]),
        ("m", "main", "lora", digest_2, [("c", "1")]),
        ("m", "v2", "lora", digest_1, [("d", "1")]),
        ("m2", None, "lora", digest_1, [("e", "1")]),
        ("m", "main", "vera", digest_1, [("f", "1")]),
    ]
    assert shape(registry.compatible_groups("m2")) == [("m2", None, "lora", digest_1, [("e", "1")])]
    group = registry.compatible_groups("m")[0]
    assert group["adapters"][0] == registry.list_adapters(name="a")[1]


def test_a_modules_digest_is_recorded_once(registry: Registry):
    row = registry.register_adapter_version("a", "1", sha256="1" * 64, uri="u", base_model="m")
    assert row["modules_digest"] is None
    assert registry.record_modules_digest("a", "1", "d" * 64)["modules_digest"] == "d" * 64
    assert registry.record_modules_digest("a", "1", "d" * 64)["modules_digest"] == "d" * 64
    with pytest.raises(ConflictError, match="has modules digest dddd"):
        registry.record_modules_digest("a", "1", "e" * 64)
    with pytest.raises(AdapterNotFoundError):
        registry.record_modules_digest("a", "2", "d" * 64)


def test_record_bundle_keeps_lineage_and_metrics_and_is_idempotent(registry: Registry):
    seed(registry, [], TASKS)
    doc = manifest("b1", TASKS)
    recorded = registry.record_bundle("b1", "tiny-llama", doc, uri="s3://bkt/bundles/b1")
    assert registry.record_bundle("b1", "tiny-llama", doc, uri="s3://bkt/bundles/b1") == recorded
    bundle = registry.get_bundle("b1")
    assert bundle == recorded
    assert bundle["base_model"] == {"name": "tiny-llama", "revision": "main"}
    assert [(m["task"], m["head"], m["adapter"]["name"]) for m in bundle["members"]] == [
        ("sst2", 0, "sst2-adapter"),
        ("agnews", 1, "agnews-adapter"),
    ]
    assert bundle["metrics"] == {
        "sst2": {"relative_error": 0.01},
        "agnews": {"relative_error": 0.02},
    }
    assert bundle["manifest"] == json.loads(json.dumps({k: v for k, v in doc.items() if k != "members"}))
    with pytest.raises(ConflictError, match="already recorded"):
        registry.record_bundle("b1", "tiny-llama", doc, uri="s3://elsewhere/b1")
    with pytest.raises(BundleNotFoundError, match="'nope'"):
        registry.get_bundle("nope")


def test_record_bundle_refuses_unknown_or_mismatched_members(registry: Registry):
    seed(registry, [], TASKS)
    with pytest.raises(AdapterNotFoundError, match="other-adapter 1"):
        registry.record_bundle("b2", "tiny-llama", manifest("b2", ["other"]), uri="u")
    lying = manifest("b3", TASKS)
    lying["members"][0]["sha256"] = "0" * 64
    with pytest.raises(ConflictError, match="sst2-adapter 1 has sha256 0000"):
        registry.record_bundle("b3", "tiny-llama", lying, uri="u")
    with pytest.raises(InvalidRequestError, match="differs"):
        registry.record_bundle("b4", "tiny-llama", manifest("b5", TASKS), uri="u")
    with pytest.raises(InvalidRequestError, match="distinct tasks"):
        registry.record_bundle("b6", "tiny-llama", manifest("b6", ["sst2", "sst2"]), uri="u")
    with pytest.raises(BundleNotFoundError):  # nothing of the failed writes was kept
        registry.get_bundle("b3")


def test_record_bundle_requires_objects_in_store_first(db_url: str, tmp_path):
    store = LocalStore(tmp_path / "objects")
    registry = Registry(make_engine(db_url), store)
    seed(registry, [], TASKS)
    key = "bundles/tiny-llama/b1"
    uri = store.uri_for(key)
    with pytest.raises(InvalidRequestError, match="write the bundle objects before"):
        registry.record_bundle("b1", "tiny-llama", manifest("b1", TASKS), key=key)
    store.put_bytes("bundles/tiny-llama/b1/manifest.json", b"{}")
    assert registry.record_bundle("b1", "tiny-llama", manifest("b1", TASKS), key=key)["bundle_uri"] == uri


def test_bundles_are_recorded_by_key_with_a_store_and_by_uri_without(registry: Registry, db_url, tmp_path):
    seed(registry, [], TASKS)
    with pytest.raises(InvalidRequestError, match="no object store"):
        registry.record_bundle("b1", "tiny-llama", manifest("b1", TASKS), key="bundles/tiny-llama/b1")
    with pytest.raises(InvalidRequestError, match="no object store"):
        registry.publish_bundle(manifest("b1", TASKS), "bundles/tiny-llama/b1", reason="", actor="x")
    store = LocalStore(tmp_path / "objects")
    with_store = Registry(make_engine(db_url), store)
    store.put_bytes("bundles/tiny-llama/b1/manifest.json", b"{}")
    with pytest.raises(InvalidRequestError, match="by its object key"):
        with_store.record_bundle("b1", "tiny-llama", manifest("b1", TASKS), uri=store.uri_for("x"))
    key = "bundles/tiny-llama/b1"
    published = with_store.publish_bundle(manifest("b1", TASKS), key, reason="publish", actor="x")
    assert published["bundle"]["bundle_uri"] == store.uri_for(key)
    assert {move["task"] for move in published["moves"]} == set(TASKS)


def test_current_bundle_shape_and_moves(registry: Registry):
    seed(registry, ["b1", "b2"], TASKS)
    event = registry.move_alias("agnews", "b1", reason="first publish", actor="flow:consolidate")
    assert (event["from_bundle_id"], event["to_bundle_id"], event["action"]) == (None, "b1", "move")
    current = registry.current_bundle("agnews")
    assert set(current) == {
        "task",
        "alias",
        "bundle_id",
        "bundle_uri",
        "base_model",
        "head",
        "adapter",
        "task_adapter_uri",
        "updated_at",
        "manifest",
    }
    assert current["bundle_id"] == "b1" and current["alias"] == "current"
    assert current["head"] == 1
    assert current["task_adapter_uri"] == "file:///bundles/b1/tasks/agnews"
    assert current["adapter"]["sha256"] == sha_of("agnews", "1")
    assert current["manifest"]["bundle_id"] == "b1"
    assert datetime.fromisoformat(current["updated_at"]).tzinfo is not None
    json.dumps(current)

    registry.move_alias("agnews", "b2", reason="better retention", actor="alice")
    assert registry.current_bundle("agnews")["bundle_id"] == "b2"


def test_unknown_task_bundle_and_unset_alias(registry: Registry):
    seed(registry, ["b1"], TASKS)
    with pytest.raises(TaskNotFoundError, match="unknown task 'nope'"):
        registry.current_bundle("nope")
    with pytest.raises(TaskNotFoundError):
        registry.history("nope")
    with pytest.raises(TaskNotFoundError):
        registry.move_alias("nope", "b1", reason="", actor="x")
    with pytest.raises(AliasNotSetError, match="'sst2' has no 'current' bundle"):
        registry.current_bundle("sst2")
    with pytest.raises(BundleNotFoundError):
        registry.move_alias("sst2", "b9", reason="", actor="x")


def test_move_refuses_bundle_without_the_task(registry: Registry):
    seed(registry, ["b1"], TASKS)
    registry.register_adapter_version(
        "x-adapter", "1", sha256=sha_of("x", "1"), uri="u", base_model="tiny-llama"
    )
    registry.record_bundle("bx", "tiny-llama", manifest("bx", ["x"]), uri="u")
    with pytest.raises(InvalidRequestError, match="'bx' has no adapter for task 'sst2'"):
        registry.move_alias("sst2", "bx", reason="", actor="x")


def test_history_and_rollback_walk_back_one_move_at_a_time(registry: Registry):
    seed(registry, ["b1", "b2", "b3"], TASKS)
    for bundle_id in ["b1", "b2", "b3"]:
        registry.move_alias("sst2", bundle_id, reason=f"publish {bundle_id}", actor="flow")
    event = registry.rollback("sst2", actor="bob")
    assert (event["from_bundle_id"], event["to_bundle_id"], event["action"]) == (
        "b3",
        "b2",
        "rollback",
    )
    assert registry.rollback("sst2", actor="bob")["to_bundle_id"] == "b1"
    assert registry.current_bundle("sst2")["bundle_id"] == "b1"
    with pytest.raises(InvalidRequestError, match="no earlier 'current' bundle"):
        registry.rollback("sst2", actor="bob")

    history = registry.history("sst2")
    assert [(e["action"], e["from_bundle_id"], e["to_bundle_id"], e["actor"]) for e in history] == [
        ("rollback", "b2", "b1", "bob"),
        ("rollback", "b3", "b2", "bob"),
        ("move", "b2", "b3", "flow"),
        ("move", "b1", "b2", "flow"),
        ("move", None, "b1", "flow"),
    ]
    assert history[-1]["reason"] == "publish b1"
    assert registry.history("agnews") == []


def test_merge_runs_are_upserted_by_flow_run_id(registry: Registry):
    seed(registry, ["b1"], TASKS)
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    run = registry.record_merge_run("run-1", status="running", params={"heads": 2}, started_at=started)
    assert run["started_at"] == "2026-01-02T03:04:05+00:00" and run["bundle_id"] is None
    done = registry.record_merge_run("run-1", status="completed", bundle_id="b1", timings={"merge_s": 1.5})
    assert done == run | {"status": "completed", "bundle_id": "b1", "timings": {"merge_s": 1.5}}


def test_a_base_model_filter_keeps_only_newest_versions_that_are_on_it(registry: Registry):
    """As before the query: the newest active version per name, then the filter (an adapter moved to
    another base model does not bring its old version back into the old base model's group)."""
    for version, base in [("1", "m"), ("2", "m2")]:
        registry.register_adapter_version(
            "a", version, sha256=version * 64, uri="u", base_model=base, modules_digest="d" * 64
        )
    assert registry.compatible_groups("m") == []
    assert [(a["name"], a["version"]) for g in registry.compatible_groups("m2") for a in g["adapters"]] == [
        ("a", "2")
    ]
