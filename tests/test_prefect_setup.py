"""Prefect start-up (`flows.prefect_setup`): the project defaults never override the user, Prefect's
database is migrated before a server starts and only when it has to be, and a server that does not
answer in time is one line saying what to set."""

import os
import subprocess
import sys

import pytest
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from flows.prefect_setup import (
    DEFAULTS,
    STARTUP_TIMEOUT,
    PrefectStartError,
    apply_defaults,
    copy_database,
    database_revisions,
    ensure_api,
    migration_heads,
    template_database,
    using_database,
)
from tests.registry_fixtures import free_port


def plain_env(**extra: str) -> dict[str, str]:
    """This environment without any PREFECT_* or HYDRACAT_* setting (a plain shell), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HYDRACAT_", "DO_NOT_TRACK"))}
    return env | extra


def test_project_defaults_fill_only_what_the_user_left_unset(tmp_path):
    env = {STARTUP_TIMEOUT: "7"}
    home = tmp_path / "new" / "prefect"
    apply_defaults({"PREFECT_HOME": str(home)}, env=env)
    assert env == DEFAULTS | {STARTUP_TIMEOUT: "7", "PREFECT_HOME": str(home)}
    assert DEFAULTS[STARTUP_TIMEOUT] == "180"
    assert home.is_dir()  # with its parents: Prefect would make only the last folder, and warn


def test_prefect_reads_the_project_defaults_even_when_imported_first():
    script = (
        "import prefect.context, flows; from prefect.settings import get_current_settings as s; "
        "print(s().server.ephemeral.startup_timeout_seconds, s().server.analytics_enabled)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=plain_env())
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["180", "False"]


def test_an_empty_prefect_home_is_migrated_before_the_server_starts_and_only_once(
    tmp_path, monkeypatch, capsys
):
    home = tmp_path / "prefect-home"
    seen_at_start = []  # the database's revisions when each server start begins

    def start(server, timeout):
        seen_at_start.append(database_revisions(home / "prefect.db"))

    monkeypatch.setattr(SubprocessASGIServer, "start", start)
    with temporary_settings(updates={PREFECT_HOME: home}, restore_defaults={PREFECT_API_URL}):
        ensure_api()
        first = capsys.readouterr().err
        ensure_api()
        second = capsys.readouterr().err
    SubprocessASGIServer().stop()  # forget the instance that never started
    assert database_revisions(home / "prefect.db") == migration_heads() != set()
    assert seen_at_start == [migration_heads(), migration_heads()]  # migrated before the first start
    assert first.count(f"migrating Prefect's database {home / 'prefect.db'}") == 1
    assert "migrating" not in second  # up to date: nothing to do


def test_throwaway_databases_start_from_the_migrated_template(prefect_template, tmp_path, capsys):
    """The template in PREFECT_HOME is at the newest migration and is returned as is; a copy of it needs
    no migration (a throwaway server then starts without 14 s of them)."""
    assert prefect_template.name == "hydracat-template.db" and prefect_template.parent.name == "prefect-test"
    assert template_database() == prefect_template
    assert "migrating" not in capsys.readouterr().err
    assert database_revisions(copy_database(prefect_template, tmp_path / "new.db")) == migration_heads()


def test_an_ephemeral_server_that_does_not_answer_in_time_is_one_line_saying_what_to_set(
    prefect_template, tmp_path
):
    database = copy_database(prefect_template, tmp_path / "prefect.db")
    timeout = {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 1}
    with (
        using_database(database),
        temporary_settings(updates=timeout, restore_defaults={PREFECT_API_URL}),
        pytest.raises(PrefectStartError) as failure,
    ):
        ensure_api()
    message = str(failure.value)
    assert "\n" not in message and message.startswith("the Prefect server did not answer within 1 s")
    assert f"set {STARTUP_TIMEOUT} higher" in message and "PREFECT_API_URL" in message
    assert None not in SubprocessASGIServer._instances  # stopped: the next start is a fresh server


def test_hydracat_serve_waits_the_users_timeout_and_says_what_to_set(prefect_template, tmp_path):
    """The user's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (1 s) wins over the project's 180 s."""
    (tmp_path / "prefect").mkdir()
    copy_database(prefect_template, tmp_path / "prefect" / "prefect.db")  # migrated: only the start is timed
    env = plain_env(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
        HYDRACAT_DATABASE_URL=f"sqlite:///{tmp_path / 'registry.db'}",
        HYDRACAT_STORE_PATH=str(tmp_path / "objects"),
    )
    command = [sys.executable, "-m", "flows.cli", "serve", "--port", str(free_port())]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1] == (
        "error: the Prefect server did not answer within 1 s: set "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or PREFECT_API_URL to a running "
        "Prefect server (`hydracat serve` starts one)"
    )
    assert "migrating" not in run.stderr
