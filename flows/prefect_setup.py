"""Prefect start-up in one place: the project's Prefect defaults, Prefect's database migrated in this
process before a server starts, and one clear line when a server still does not answer.

Why (issue 12): a new Prefect database gets all of Prefect's Alembic migrations (113 for SQLite,
about 14 s on 2 cores) and the ephemeral server ran them inside its start-up window, 20 s by default;
with another process on one core the first start needed 42-46 s and timed out. Here the migrations
run before the server starts, only when the database is new or behind, and the window is
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, project default 180 s (a start on a busy
machine took up to 30 s even without migrations). ``PREFECT_SERVER_DATABASE_TIMEOUT``, project
default 60 s (Prefect's 10 s): on a busy 2-core machine a SQLite server's writes waited longer for
the database lock, and the run-deployment action of a firing deployment trigger failed with 503,
its run never made (issue 15). Defaults yield to the environment; a value in a Prefect profile does
not win over them (environment variables outrank profiles): export it.
"""

import asyncio
import contextlib
import os
import re
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

from flows.processes import free_port

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
TEMPLATE = "hydracat-template.db"
DATABASE_TIMEOUT = "PREFECT_SERVER_DATABASE_TIMEOUT"
DEFAULTS = {
    STARTUP_TIMEOUT: "180",
    DATABASE_TIMEOUT: "60",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


class PrefectStartError(RuntimeError):
    """A Prefect server did not answer in time; the message is one line saying what to set."""

    def __init__(self, timeout_s: float):
        super().__init__(
            f"the Prefect server did not answer within {timeout_s:.0f} s: set {STARTUP_TIMEOUT} higher, "
            "or PREFECT_API_URL to a running Prefect server (`hydracat serve` starts one)"
        )


def apply_defaults(extra: Mapping[str, str] = {}, env: MutableMapping[str, str] = os.environ) -> None:
    """Set the project's defaults, and `extra`, for each variable not set yet (the user's value wins).

    Prefect reads its settings when it is imported; if it was, they are read again. A PREFECT_HOME set
    here is created with its parents (Prefect creates only the last folder, and warns)."""
    missing = {name: value for name, value in (DEFAULTS | dict(extra)).items() if name not in env}
    env.update(missing)
    if "PREFECT_HOME" in missing:
        Path(missing["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    if missing and env is os.environ and "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def startup_timeout_s() -> int:
    """How long to wait for a Prefect server to answer (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)."""
    from prefect.settings import get_current_settings

    return get_current_settings().server.ephemeral.startup_timeout_seconds


def database_path() -> Path | None:
    """The file of Prefect's database in the current settings; None unless it is a SQLite file."""
    from prefect.settings import get_current_settings
    from sqlalchemy.engine import make_url

    url = make_url(get_current_settings().server.database.connection_url.get_secret_value())
    if url.get_backend_name() != "sqlite" or not url.database or "memory" in url.database or url.query:
        return None
    return Path(url.database)


@contextlib.contextmanager
def using_database(path: Path) -> Iterator[None]:
    """Prefect's settings in this block name the SQLite file `path` as Prefect's database."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    with temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{path}"}):
        yield


def migration_heads() -> set[str]:
    """The newest revisions of Prefect's SQLite migrations, read as text (Alembic imports them: 2-3 s)."""
    import prefect

    folder = Path(prefect.__file__).parent / "server" / "database" / "_migrations" / "versions" / "sqlite"
    revisions, parents = set(), set()
    for file in folder.glob("*.py"):
        text = file.read_text()
        revisions.update(re.findall(r'^revision = "(\w+)"', text, re.MULTILINE))
        parents.update(re.findall(r'^down_revision = "(\w+)"', text, re.MULTILINE))
    return revisions - parents


def database_revisions(path: Path) -> set[str]:
    """The Alembic revisions recorded in the SQLite database `path`; empty when it is new."""
    if not path.is_file():
        return set()
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        try:
            return {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
        except sqlite3.OperationalError:  # no alembic_version table: nothing migrated yet
            return set()


def migrate_database() -> bool:
    """Migrate Prefect's SQLite database here when it is new or behind (one progress line); True if it ran.

    Another database (PostgreSQL) is left to its server, which migrates it on start."""
    path = database_path()
    if path is None or database_revisions(path) == migration_heads():
        return False
    print(f"migrating Prefect's database {path} (once: 15 s to a minute) ...", file=sys.stderr, flush=True)
    from prefect.server.database.dependencies import provide_database_interface, temporary_database_interface

    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_database_interface():  # this database, not the first one this process asked for
        asyncio.run(provide_database_interface().create_db())
    return True


def copy_database(source: Path, target: Path) -> Path:
    """A consistent copy of the SQLite database `source` (what its write-ahead log holds included)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source)) as original,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        original.backup(copy)
    return target


def template_database() -> Path:
    """``$PREFECT_HOME/hydracat-template.db``: an empty Prefect database at the newest migration, made
    (or brought up to date) here when needed, so that throwaway servers start without migrating."""
    from prefect.settings import get_current_settings

    template = Path(get_current_settings().home) / TEMPLATE
    if database_revisions(template) == migration_heads():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".template-", dir=template.parent) as staging:
        migrated, copied = Path(staging) / "migrated.db", Path(staging) / "copied.db"
        with using_database(migrated):
            migrate_database()
        os.replace(copy_database(migrated, copied), template)  # whole or not at all, for other processes
    return template


def start(server: "SubprocessASGIServer") -> None:
    """Start `server` and wait up to the start-up timeout; if it does not answer, stop it and raise
    PrefectStartError. Prefect's logging is set up first (importing prefect.main does it), so its
    "Starting temporary server on ..." line shows even when no flow was imported yet."""
    import prefect.main  # noqa: F401

    timeout_s = startup_timeout_s()
    try:
        server.start(timeout=timeout_s)
    except RuntimeError as error:
        server.stop()
        if not str(error).startswith("Timed out"):
            raise
        raise PrefectStartError(timeout_s) from error


def ensure_api() -> str | None:
    """The Prefect API this process's flows will use: PREFECT_API_URL when set, else Prefect's ephemeral
    server, started here (its database migrated first). None when ephemeral mode is off."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return settings.api.url
    migrate_database()
    server = SubprocessASGIServer()  # the instance Prefect's clients start and use in ephemeral mode
    start(server)
    return server.api_url


@contextlib.contextmanager
def temporary_server(database: Path) -> Iterator[str]:
    """A Prefect server subprocess on a free port over the SQLite file `database` (a copy of
    `template_database()` when new, else migrated here first when behind), the API of this process
    while the block runs; yields its API URL.

    What `prefect.testing.utilities.prefect_test_harness` does (Prefect 3.8), on a database of the
    caller's and with the project's start-up timeout."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not database.exists():
        copy_database(template_database(), database)
    with using_database(database):
        migrate_database()
        server = SubprocessASGIServer(port=free_port())
        prior = SubprocessASGIServer._instances.get(None)
        SubprocessASGIServer._instances[None] = server  # what flows in other threads start: this one
        try:
            start(server)
            with (
                temporary_settings(updates={PREFECT_API_URL: server.api_url}),
                _temporary_global_settings_context(get_settings_context()),  # for threads started later
            ):
                yield server.api_url
                APILogWorker.drain_all()  # logs and events still queued, before the server goes
                EventsWorker.drain_all()
        finally:
            server.stop()
            SubprocessASGIServer._instances.pop(None, None)
            if prior is not None:
                SubprocessASGIServer._instances[None] = prior
