"""What every flow opens from the settings, and which failures are worth a retry."""

import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from flows.events import emit_changes
from registry.api import Registry
from registry.settings import Settings
from registry.store.base import StoreError

T = TypeVar("T")
KEPT_REGISTRIES = 4
RETRY_DELAYS_S = [1, 4, 16]  # between the tries of a step that failed transiently (tasks and `retrying`)
_open: dict[tuple[int, Settings], Registry] = {}
_opening = threading.Lock()


def open_registry(settings: Settings | None = None) -> Registry:
    """The registry and object store `settings` name (default: the HYDRACAT_* environment, read now).

    One per settings and process, shared by every flow and task run in it (one engine, one pool);
    beyond the last `KEPT_REGISTRIES` settings used, the oldest one's connections are closed.
    """
    key = (os.getpid(), settings or Settings.from_env())
    with _opening:
        registry = _open.pop(key, None) or Registry.from_settings(key[1], notify=emit_changes)
        _open[key] = registry  # the most recently used last
        while len(_open) > KEPT_REGISTRIES:
            oldest = next(iter(_open))
            if oldest[0] == os.getpid():  # a parent's connections are not a forked child's to close
                _open[oldest].close()
            del _open[oldest]
    return registry


def is_transient(error: BaseException | None) -> bool:
    """Network, timeout, throttling and server-side errors of S3 or the database.

    botocore's timeouts are among them: ReadTimeoutError is an HTTPClientError, ConnectTimeoutError
    and EndpointConnectionError are ConnectionErrors. A store error raised while handling an S3
    error is judged by that error.
    """
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(error, StoreError) and error.__context__ is not None:
        return is_transient(error.__context__)
    if isinstance(error, ConnectionError | HTTPClientError | OperationalError | TimeoutError | OSError):
        return not isinstance(error, FileNotFoundError | PermissionError)
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated)
    if isinstance(error, ClientError):
        response = error.response
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or response.get("Error", {}).get("Code") in {
            "Throttling",
            "SlowDown",
            "RequestTimeout",
        }
    return False


def transient_error(_task, _task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only transient failures."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - the result itself may be the failure
        error = exc
    return is_transient(error if isinstance(error, BaseException) else None)


def retrying(step: Callable[[], T]) -> T:
    """`step()`, tried again after each of RETRY_DELAYS_S while it fails transiently: the flows' task
    retry policy, for a step whose result is too big to be a task's."""
    for delay in RETRY_DELAYS_S:
        try:
            return step()
        except Exception as error:  # noqa: BLE001 - judged just below
            if not is_transient(error):
                raise
        time.sleep(delay)
    return step()
