"""What every flow opens from the settings, and which failures are worth a retry."""

from registry.api import Registry
from registry.settings import Settings
from registry.store.base import StoreError


def open_registry() -> Registry:
    """The registry and object store named by the HYDRACAT_* environment (read on each call)."""
    registry = Registry.from_settings(Settings.from_env())
    if registry.store is None:
        raise RuntimeError("no object store configured")
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
