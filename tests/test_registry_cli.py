"""Registry CLI commands, run through argparse against a temporary SQLite registry."""

import json

import pytest

from registry.api import Registry
from registry.db import make_engine
from tests.registry_fixtures import registry_cli_args as parse
from tests.registry_fixtures import run_registry_cli as run
from tests.registry_fixtures import seed


@pytest.fixture
def url(tmp_path, capsys) -> str:
    url = f"sqlite:///{tmp_path / 'data' / 'registry.db'}"
    code, out, _ = run(capsys, "registry", "init", "--database-url", url)
    assert code == 0 and "registry database ready" in out
    registry = Registry(make_engine(url))
    seed(registry, ["b1", "b2"], ["sst2"])
    registry.move_alias("sst2", "b1", reason="publish", actor="flow")
    registry.move_alias("sst2", "b2", reason="better", actor="flow")
    return url


def test_current_json_is_the_python_shape(url: str, capsys):
    code, out, _ = run(capsys, "registry", "current", "--task", "sst2", "--json", "--database-url", url)
    assert code == 0
    assert json.loads(out) == Registry(make_engine(url)).current_bundle("sst2")
    code, out, _ = run(capsys, "registry", "current", "--task", "sst2", "--database-url", url)
    assert code == 0 and "b2 (head 0)" in out and "file:///bundles/b2/tasks/sst2" in out


def test_history_and_rollback(url: str, capsys, monkeypatch):
    monkeypatch.setenv("HYDRACAT_DATABASE_URL", url)  # the default comes from the environment
    code, out, _ = run(capsys, "registry", "rollback", "--task", "sst2", "--actor", "alice")
    assert code == 0 and out.strip() == "sst2: b2 -> b1"
    code, out, _ = run(capsys, "registry", "history", "--task", "sst2", "--json")
    events = json.loads(out)
    assert [(e["action"], e["to_bundle_id"], e["actor"]) for e in events] == [
        ("rollback", "b1", "alice"),
        ("move", "b2", "flow"),
        ("move", "b1", "flow"),
    ]
    code, out, _ = run(capsys, "registry", "history", "--task", "sst2")
    assert code == 0 and len(out.splitlines()) == 3 and "b2 -> b1  by alice: rollback" in out


def test_unknown_task_is_a_one_line_error(url: str, capsys):
    for command in ("current", "history", "rollback"):
        code, out, err = run(capsys, "registry", command, "--task", "nope", "--database-url", url)
        assert (code, out, err) == (1, "", "error: unknown task 'nope'\n")


def test_api_command_parses_host_and_port():
    args = parse("api", "--host", "0.0.0.0", "--port", "9001")
    assert (args.host, args.port, args.handler.__name__) == ("0.0.0.0", 9001, "run_api")
    assert args.keep_alive_s == 75


def test_uninitialised_database_is_a_hint_not_a_traceback(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, _, err = run(capsys, "registry", "current", "--task", "x", "--database-url", url)
    assert code == 1 and "no such table" in err and "hydracat registry init" in err
