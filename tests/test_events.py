"""Registry changes (SQLite and PostgreSQL) and the Prefect events they become; the bucket-notification
payloads the object-created endpoint reads (MinIO's and S3's shapes, against a moto S3 store)."""

import json
import logging

import pytest
from prefect.events import Event

from bench.watch import minio_notification
from flows.events import MAX_EVENT_TASKS, prefect_event
from flows.notifications import MalformedNotification, adapter_prefixes, created_objects
from registry.api import Registry
from registry.db import make_engine
from registry.events import Change
from registry.store import LocalStore
from registry.store.s3 import S3Store
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    manifest,
    s3_bucket_fixture,
    s3_endpoint_fixture,
    seed,
    sha_of,
)

TASKS = ["sst2", "agnews"]


@pytest.fixture(name="heard")
def heard_fixture(db_url, tmp_path):
    """A registry with a store whose listener records every change it is told; yields (registry, changes)."""
    changes: list[Change] = []
    engine = make_engine(db_url)
    yield Registry(engine, LocalStore(tmp_path / "objects"), notify=changes.extend), changes
    engine.dispose()


def kinds(changes: list[Change]) -> list[tuple[str, str | None]]:
    return [(change.kind, change.base_model) for change in changes]


def test_registered_quarantined_and_pending_versions_are_told_once(heard):
    registry, changes = heard
    fields = dict(uri="u", base_model="m", modules_digest="d" * 64)
    registry.register_adapter_version("a", "1", sha256="1" * 64, **fields)
    registry.register_adapter_version("a", "1", sha256="1" * 64, **fields)  # again: nothing changed
    registry.register_adapter_versions([
        {"name": "b", "version": "1", "sha256": "2" * 64, **fields, "quarantine_reason": "bad shapes"},
        {"name": "c", "version": "1", "sha256": "3" * 64, **fields, "pending_reason": "base model offline"},
    ])  # fmt: skip
    registry.register_adapter_version("c", "1", sha256="3" * 64, **fields)  # the pending one resolves
    assert kinds(changes) == [
        ("adapter.registered", "m"), ("adapter.quarantined", "m"), ("adapter.pending", "m"),
        ("adapter.registered", "m"),
    ]  # fmt: skip
    assert [(c.subject["name"], c.subject["status"]) for c in changes] == [
        ("a", "active"), ("b", "quarantined"), ("c", "pending"), ("c", "active"),
    ]  # fmt: skip


def test_retire_base_models_publish_and_rollback_are_told(heard, tmp_path):
    registry, changes = heard
    seed(registry, [], TASKS)
    changes.clear()
    registry.retire_adapter("sst2-adapter", "1")
    registry.retire_adapter("sst2-adapter", "1")  # already retired: nothing new
    registry.add_base_model("org/base", kind="hub", location="org/base")
    registry.add_base_model("org/base", kind="hub", location="org/base")  # the same source again
    registry.add_base_model_alias("/ckpt/base", "org/base")
    for bundle_id in ("b1", "b2"):
        key = f"bundles/tiny-llama/{bundle_id}"
        registry.store.put_bytes(f"{key}/manifest.json", b"{}")
        registry.publish_bundle(manifest(bundle_id, TASKS), key, reason="publish", actor="test")
    registry.publish_bundle(manifest("b2", TASKS), "bundles/tiny-llama/b2", reason="again", actor="test")
    registry.rollback("agnews", actor="test")
    assert kinds(changes) == [
        ("adapter.retired", "tiny-llama"), ("base-model.registered", "org/base"),
        ("base-model.aliased", "org/base"), ("bundle.published", "tiny-llama"),
        ("bundle.published", "tiny-llama"), ("alias.rolled-back", None),
    ]  # fmt: skip
    published = changes[3].subject
    assert published["tasks"] == TASKS and sorted(published["moved"]) == sorted(TASKS)
    assert published["bundle_uri"] == registry.store.uri_for("bundles/tiny-llama/b1")
    assert (changes[5].subject["from_bundle_id"], changes[5].subject["to_bundle_id"]) == ("b2", "b1")


def test_a_failing_listener_never_fails_the_write(db_url, caplog):
    def broken(_changes):
        raise ConnectionError("no Prefect server")

    engine = make_engine(db_url)
    registry = Registry(engine, notify=broken)
    with caplog.at_level(logging.WARNING, logger="registry.api"):
        row = registry.register_adapter_version("a", "1", sha256="1" * 64, uri="u", base_model="m")
    assert row["status"] == "active" and registry.list_adapters(name="a")[0]["id"] == row["id"]
    assert "could not notify 1 registry change" in caplog.text
    engine.dispose()


def adapter_row(status: str = "active", **extra) -> dict:
    return {
        "id": 1, "name": "sst2", "version": "3", "base_model": {"name": "org/base", "revision": "main"},
        "adapter_type": "lora", "sha256": "a" * 64, "uri": "s3://b/adapters/sst2/3", "rank": 4,
        "alpha": 8.0, "targets": ["q_proj"], "modules_digest": "d" * 64, "status": status,
        "quarantine_reason": None, "pending_reason": None, "created_at": "2026-12-03T00:00:00",
    } | extra  # fmt: skip


def test_adapter_events_name_the_version_its_base_model_and_group():
    fields = prefect_event(Change("adapter.registered", adapter_row(), "org/base"))
    event = Event(**fields)  # what Prefect accepts
    assert event.event == "hydracat.adapter.registered"
    assert event.resource.id == "hydracat.adapter.sst2.3"
    assert event.resource["hydracat.base-model"] == "org/base"  # the trigger's bucket
    roles = {related.role: related.id for related in event.related}
    assert roles["base-model"] == "hydracat.base-model.org/base"
    assert roles["group"].startswith("hydracat.group.org--base-")
    assert event.payload == {"status": "active", "sha256": "a" * 64, "uri": "s3://b/adapters/sst2/3",
                             "adapter_type": "lora", "rank": 4, "reason": None}  # fmt: skip
    bad = adapter_row("quarantined", quarantine_reason="bad shapes", modules_digest=None)
    quarantined = Event(**prefect_event(Change("adapter.quarantined", bad, "org/base")))
    assert [r.role for r in quarantined.related] == ["base-model"]  # in no group
    assert quarantined.payload["reason"] == "bad shapes"


def test_bundle_event_caps_its_task_list():
    tasks = [f"task-{i:05d}" for i in range(MAX_EVENT_TASKS + 5)]
    subject = {"bundle_id": "b1", "bundle_uri": "s3://b/bundles/x/b1", "tasks": tasks, "moved": tasks[:2]}
    event = Event(**prefect_event(Change("bundle.published", subject, "org/base")))
    assert (event.event, event.resource.id) == ("hydracat.bundle.published", "hydracat.bundle.b1")
    assert event.payload["tasks"] == tasks[:MAX_EVENT_TASKS] and event.payload["task_count"] == len(tasks)
    assert event.payload["moved"] == tasks[:2] and event.resource["hydracat.base-model"] == "org/base"
    with pytest.raises(ValueError, match="no Prefect event"):
        prefect_event(Change("adapter.renamed", {}, None))


def test_notifications_name_the_created_objects():
    body = minio_notification("hydracat", "adapters/my task/1/adapter_model.safetensors")
    assert created_objects(body) == [("hydracat", "adapters/my task/1/adapter_model.safetensors")]
    assert created_objects(minio_notification("hydracat", "adapters/a/1/x", "s3:ObjectRemoved:Delete")) == []
    assert created_objects(json.loads(json.dumps({"Records": []}))) == []
    for bad, why in [
        ([], "expected a bucket notification"),
        ({"EventName": "s3:ObjectCreated:Put"}, "expected a bucket notification"),
        ({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}, "record 0 has no"),
        ({"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}]},
         "record 0 has no"),
        ({"Records": [{"eventName": 7, "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]},
         "must be strings"),
    ]:  # fmt: skip
        with pytest.raises(MalformedNotification, match=why):
            created_objects(bad)


def test_notified_keys_become_one_sync_prefix_per_adapter(s3_endpoint, s3_bucket):
    registry = Registry(make_engine("sqlite://"), S3Store(s3_bucket, "catalog", endpoint_url=s3_endpoint))
    objects = [
        (s3_bucket, "catalog/adapters/sst2/3/adapter_config.json"),
        (s3_bucket, "catalog/adapters/sst2/3/adapter_model.safetensors"),
        (s3_bucket, "catalog/adapters/agnews/1/adapter_model.safetensors"),
        (s3_bucket, "catalog/bundles/base/b1/manifest.json"),  # what consolidate writes
        (s3_bucket, "elsewhere/adapters/x/1/adapter_model.safetensors"),
        ("another-bucket", "catalog/adapters/x/1/adapter_model.safetensors"),
        (s3_bucket, "catalog/adapters/../1/adapter_model.safetensors"),
    ]
    prefixes, ignored = adapter_prefixes(registry, objects)
    assert prefixes == ["adapters/sst2", "adapters/agnews"]
    reasons = {entry["key"]: entry["reason"] for entry in ignored}
    assert (
        reasons[f"{s3_bucket}/catalog/bundles/base/b1/manifest.json"]
        == "not an adapters/<name>/<version>/ file"
    )
    assert reasons[f"{s3_bucket}/elsewhere/adapters/x/1/adapter_model.safetensors"] == (
        "not in the registry's object store"
    )
    assert reasons["another-bucket/catalog/adapters/x/1/adapter_model.safetensors"] == (
        "not in the registry's object store"
    )
    assert ".." in reasons[f"{s3_bucket}/catalog/adapters/../1/adapter_model.safetensors"]
