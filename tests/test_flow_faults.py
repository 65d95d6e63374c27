"""Faults injected into real flow runs (test server, moto over HTTP, SQLite and PostgreSQL): S3 errors
and timeouts, a dropped database connection, a full disk, a worker killed mid-run. Each run either
completes or fails with nothing half-done, and the rerun completes; `audit` finds nothing lost."""

import pytest

import flows.consolidate
from bench.faults import (
    audit,
    db_connection_dropped,
    disk_full,
    failing,
    kill_consolidate_at,
    retried_tasks,
    retry_delays,
    s3_connect_timeout,
    s3_read_timeout,
    s3_unreachable,
    under,
)
from flows.catalog import sync_catalog
from flows.consolidate import consolidate, plan_groups
from flows.locks import group_lock
from registry.api import Registry
from registry.errors import NotFoundError
from registry.store.s3 import S3Store
from tests.flow_fixtures import LOSSLESS, catalog_fixture, harness_fixture, sources_fixture  # noqa: F401
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    s3_bucket_fixture,
    s3_endpoint_fixture,
)

B_TASKS = [f"b-task-{i}" for i in range(6)]


@pytest.fixture
def fast_retries():
    """The same 3 retries, 0.2 s apart instead of 1, 4 and 16 s."""
    with retry_delays(0.2):
        yield


def test_every_store_and_registry_step_retries_transient_failures_1_4_16_s_apart():
    names = {task.name for task in retried_tasks()}
    assert names == {"check_batch", "waiting_base_model", "plan",
                     "fetch_members", "publish_objects", "publish_records"}  # fmt: skip
    assert all(task.retries == 3 and task.retry_delay_seconds == [1, 4, 16] for task in retried_tasks())


def test_a_failure_between_upload_and_commit_leaves_nothing_visible(catalog):
    registry, store = catalog["registry"], catalog["store"]
    sync_catalog(prefix="adapters/b-")

    with failing(Registry, "publish_bundle", lambda: RuntimeError("injected: crash before the commit")):
        state = consolidate(return_state=True, **LOSSLESS)
    assert state.is_failed()
    assert list(store.list("bundles/"))  # the objects were written ...
    with pytest.raises(NotFoundError):  # ... but no row and no alias points at them
        registry.current_bundle("b-task-0")

    rerun = consolidate(**LOSSLESS)
    assert len(rerun["published"]) == 1
    assert registry.current_bundle("b-task-0")["bundle_id"] == rerun["published"][0]


def test_transient_s3_errors_are_retried_and_a_lasting_outage_fails_cleanly(catalog, fast_retries):
    registry = catalog["registry"]
    sync_catalog(prefix="adapters/b-")
    with failing(S3Store, "put_file", s3_unreachable, when=under("bundles/")) as down:
        state = consolidate(return_state=True, **LOSSLESS)  # the store is down for good
    assert state.is_failed() and down.raised == down.calls == 4  # the first upload, tried 1 + 3 times
    with pytest.raises(NotFoundError):
        registry.current_bundle("b-task-0")
    with failing(S3Store, "put_file", s3_unreachable, times=2, when=under("bundles/")) as flaky:
        published = consolidate(**LOSSLESS)["published"]  # two transient failures, then it answers
    assert flaky.raised == 2 and flaky.calls > 2
    assert len(published) == 1 and registry.current_bundle("b-task-0")["bundle_id"] == published[0]


def test_s3_timeouts_while_syncing_are_retried_and_a_lasting_one_registers_nothing_half(
    catalog, fast_retries
):
    registry, store = catalog["registry"], catalog["store"]
    with failing(S3Store, "download", s3_connect_timeout, when=under("adapters/b-task-3/")) as down:
        state = sync_catalog(prefix="adapters/b-", return_state=True)
    assert state.is_failed() and down.raised == 4  # the folder's first file, tried 1 + 3 times
    registered = {a["name"]: a["status"] for a in registry.list_adapters()}
    assert "b-task-3" not in registered and set(registered.values()) <= {"active"}  # never quarantined
    assert audit(catalog["db_url"], store)["problems"] == []

    with failing(S3Store, "download", s3_read_timeout, times=2, when=under("adapters/b-task-3/")) as slow:
        synced = sync_catalog(prefix="adapters/b-")
    assert slow.raised == 2 and synced["quarantined"] == []
    assert sorted(a["name"] for a in registry.list_adapters(status="active")) == B_TASKS


def test_s3_timeouts_while_consolidate_fetches_adapters_are_retried_then_fail_cleanly(
    catalog, fast_retries, tmp_path
):
    registry, store = catalog["registry"], catalog["store"]
    sync_catalog(prefix="adapters/b-")
    with failing(S3Store, "download", s3_read_timeout, when=under("adapters/")) as down:
        state = consolidate(return_state=True, **LOSSLESS)
    assert state.is_failed() and down.raised == 4
    assert not list(store.list("bundles/"))
    with pytest.raises(NotFoundError):
        registry.current_bundle("b-task-0")
    assert not list((tmp_path / "work" / "adapters").iterdir())  # no half-fetched adapter folder

    with failing(S3Store, "download", s3_read_timeout, times=2, when=under("adapters/")) as slow:
        (bundle_id,) = consolidate(**LOSSLESS)["published"]
    assert slow.raised == 2 and registry.current_bundle("b-task-5")["bundle_id"] == bundle_id


def test_a_dropped_database_connection_at_commit_is_retried_without_duplicates(catalog):
    registry = catalog["registry"]
    sync_catalog(prefix="adapters/b-")
    with failing(Registry, "publish_bundle", db_connection_dropped, times=1) as dropped:
        (bundle_id,) = consolidate(**LOSSLESS)["published"]
    assert dropped.calls == 2
    assert [event["to_bundle_id"] for event in registry.history("b-task-0")] == [bundle_id]


def test_a_full_disk_while_writing_the_bundle_fails_the_run_and_leaves_nothing(catalog, tmp_path):
    registry = catalog["registry"]
    sync_catalog(prefix="adapters/b-")
    with failing(flows.consolidate, "write_bundle", disk_full):
        state = consolidate(return_state=True, **LOSSLESS)
    assert state.is_failed()
    with pytest.raises(NotFoundError):
        registry.current_bundle("b-task-0")
    assert not list(catalog["store"].list("bundles/"))
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith("hydracat-bundle-")]
    assert len(consolidate(**LOSSLESS)["published"]) == 1  # space is back: the rerun publishes


def test_a_group_lock_excludes_other_holders_of_the_same_group_only(db_url):
    import threading

    waited = {"b": threading.Event(), "a": threading.Event()}

    def take(label: str) -> None:
        with group_lock(db_url, label, on_wait=waited[label].set):
            pass

    with group_lock(db_url, "a"):
        others = [threading.Thread(target=take, args=(label,)) for label in ("b", "a")]
        for thread in others:
            thread.start()
        assert waited["a"].wait(10)  # the same group waits ...
        others[0].join(10)
        assert not others[0].is_alive() and not waited["b"].is_set()  # ... another one does not
    others[1].join(10)
    assert not others[1].is_alive()  # and gets the lock once it is released


def test_a_worker_killed_mid_merge_or_before_the_commit_never_blocks_the_rerun(catalog, tmp_path):
    registry, store, db_url = catalog["registry"], catalog["store"], catalog["db_url"]
    sync_catalog(prefix="adapters/b-")

    merge = kill_consolidate_at("merge", tmp_path / "killed", **LOSSLESS)
    assert merge["exit"] == -9 and not list(store.list("bundles/"))
    # the second worker gets the group's lock the dead one held, and dies after uploading the bundle
    commit = kill_consolidate_at("commit", tmp_path / "killed", **LOSSLESS)
    assert commit["exit"] == -9
    assert [key for key in store.list("bundles/") if key.endswith("/manifest.json")]
    with pytest.raises(NotFoundError):
        registry.current_bundle("b-task-0")

    def held():
        raise AssertionError("a killed worker still holds its group's lock")

    for label in plan_groups(None):
        with group_lock(db_url, label, on_wait=held):
            pass
    (bundle_id,) = consolidate(**LOSSLESS)["published"]
    report = audit(db_url, store)
    assert report["problems"] == [] and report["bundles"] == 1
    for task in B_TASKS:
        assert [e["to_bundle_id"] for e in registry.history(task)] == [bundle_id]
        assert registry.current_bundle(task)["bundle_id"] == bundle_id
