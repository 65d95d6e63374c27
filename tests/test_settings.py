"""Settings are written and read once: HYDRACAT_* round-trips, one registry per settings and process."""

from dataclasses import replace

from flows.resources import KEPT_REGISTRIES, open_registry
from flows.settings import FlowSettings
from registry.store import LocalStore


def test_the_environment_a_settings_object_writes_reads_back_as_it(tmp_path):
    local = FlowSettings.in_folder(tmp_path)
    s3 = FlowSettings.in_folder(tmp_path, tmp_path / "models-elsewhere", s3_bucket="b", s3_endpoint_url="http://s3")
    for settings in (local, s3, replace(local, device="cpu")):
        assert FlowSettings.from_env(settings.to_env()) == settings
    stale = {"HYDRACAT_STORE_URL": "s3://someone-elses/bucket", "HYDRACAT_API_TOKEN": "old"}
    assert FlowSettings.from_env(stale | local.to_env()) == local  # every catalog setting is named
    assert local.registry.database_url == f"sqlite:///{tmp_path / 'registry.db'}"


def test_one_registry_per_settings_and_the_oldest_closed_beyond_the_kept_ones(tmp_path):
    def settings(name: str):
        return FlowSettings.in_folder(tmp_path / name).registry

    registry = open_registry(settings("first"))
    assert open_registry(settings("first")) is registry
    assert isinstance(registry.store, LocalStore) and registry.store.root == tmp_path / "first" / "objects"
    others = [open_registry(settings(str(i))) for i in range(1, KEPT_REGISTRIES)]
    assert open_registry(settings("first")) is registry  # the most recently used now
    pool = others[0]._engine.pool
    open_registry(settings("new"))
    assert others[0]._engine.pool is not pool  # the least recently used one's connections were closed
    assert open_registry(settings("1")) is not others[0]
    assert open_registry(settings("first")) is registry
