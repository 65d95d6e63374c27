"""Engine, sessions and migrations.

SQLite connections run with foreign keys on, WAL journaling and a busy timeout, and let
SQLAlchemy emit BEGIN itself, so a write transaction can start with ``BEGIN IMMEDIATE``
(pass ``execution_options={WRITE_LOCK: True}`` to ``Session.connection``): writers queue up
instead of failing half-way with "database is locked".
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from registry.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
WRITE_LOCK = "hydracat_write_lock"
SQLITE_BUSY_TIMEOUT_S = 60


def default_database_url() -> str:
    return Settings.from_env().database_url


def make_engine(url: str | None = None, **kwargs) -> Engine:
    """An engine for `url` (default: settings); creates the folder of a SQLite file."""
    url = make_url(url or default_database_url())
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **kwargs)
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN, see on_begin
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_LOCK, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """Alembic configuration built in code: works from an installed package, no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision`."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
