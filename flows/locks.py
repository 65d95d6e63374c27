"""One lock per consolidate group, held where the registry lives and dropped the moment its holder dies.

PostgreSQL: a session advisory lock, on a connection of its own, keyed by the schema and the group
label; the server drops it when that connection closes (a killed process closes its sockets; a
host that vanishes is noticed by the session's TCP keepalives within about a minute). SQLite: an
exclusive `flock` on a file beside the database; the kernel drops it when the holder exits.
Nobody has to expire a lease, so a killed worker never blocks its group.
"""

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

# Server-side keepalives of the lock's session: a holder whose host vanished is dropped in ~60 s.
KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}
LOCK_KEY = "hashtextextended('hydracat-group:' || current_schema() || ':' || :label, 0)"


@contextmanager
def group_lock(database_url: str, label: str, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the lock of group `label` in the registry at `database_url`; `on_wait` is called if busy."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        with _advisory_lock(url, label, on_wait):
            yield
    elif backend == "sqlite":
        with _file_lock(lock_file(url, label), on_wait):
            yield
    else:
        raise ValueError(f"no group lock for {backend} databases (PostgreSQL or SQLite)")


def lock_file(url: URL, label: str) -> Path:
    """`<database>.locks/<label>.lock` beside the SQLite file."""
    if not url.database or url.database == ":memory:":
        raise ValueError("a SQLite registry shared by flow runs must be a file")
    database = Path(url.database).expanduser()
    return database.with_name(f"{database.name}.locks") / f"{label}.lock"


@contextmanager
def _advisory_lock(url: URL, label: str, on_wait: Callable[[], None]) -> Iterator[None]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            for name, value in KEEPALIVES.items():
                connection.exec_driver_sql(f"SET {name} = {value}")
            if not connection.scalar(text(f"SELECT pg_try_advisory_lock({LOCK_KEY})"), {"label": label}):
                on_wait()
                connection.execute(text(f"SELECT pg_advisory_lock({LOCK_KEY})"), {"label": label})
            connection.commit()
            yield  # closing the connection (NullPool: really closed) releases the lock
    finally:
        engine.dispose()


@contextmanager
def _file_lock(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
