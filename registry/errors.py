"""Registry errors. Every message names the thing that was not found or did not match."""


class RegistryError(Exception):
    """Base class for errors the registry reports to its callers."""


class NotFoundError(RegistryError, LookupError):
    """Something asked for by name or id does not exist."""


class TaskNotFoundError(NotFoundError):
    def __init__(self, task: str) -> None:
        super().__init__(f"unknown task {task!r}")


class AliasNotSetError(NotFoundError):
    def __init__(self, task: str, alias: str) -> None:
        super().__init__(f"task {task!r} has no {alias!r} bundle yet")


class BundleNotFoundError(NotFoundError):
    def __init__(self, bundle_id: str) -> None:
        super().__init__(f"unknown bundle {bundle_id!r}")


class AdapterNotFoundError(NotFoundError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"unknown adapter {ref}")


class ConflictError(RegistryError):
    """A write contradicts what the registry already holds."""


class InvalidRequestError(RegistryError, ValueError):
    """A write is malformed or impossible in the current state."""


class BaseModelNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no registered base model {name!r}")
