"""One flat registry of merge methods (mergekit style): name -> MergeMethod."""

from hydraopt.methods.base import MergeMethod

METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known: {sorted(METHODS)}") from None


# Importing the method modules registers them.
from hydraopt.methods import hydraopt, task_arithmetic  # noqa: E402, F401
