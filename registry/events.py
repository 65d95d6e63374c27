"""What the registry tells a listener about its writes: one `Change` per thing a committed write
changed, handed to the `Notify` callable a `registry.api.Registry` was opened with (the flows turn
them into Prefect events: `flows.events`). The registry itself knows nothing about Prefect.
"""

from collections.abc import Callable
from dataclasses import dataclass

ADAPTER_REGISTERED = "adapter.registered"
ADAPTER_QUARANTINED = "adapter.quarantined"
ADAPTER_PENDING = "adapter.pending"
ADAPTER_RETIRED = "adapter.retired"
BUNDLE_PUBLISHED = "bundle.published"
ALIAS_ROLLED_BACK = "alias.rolled-back"
BASE_MODEL_REGISTERED = "base-model.registered"
BASE_MODEL_ALIASED = "base-model.aliased"

ADAPTER_KIND_BY_STATUS = {
    "active": ADAPTER_REGISTERED,
    "quarantined": ADAPTER_QUARANTINED,
    "pending": ADAPTER_PENDING,
}
ADAPTER_KINDS = (*ADAPTER_KIND_BY_STATUS.values(), ADAPTER_RETIRED)


@dataclass(frozen=True)
class Change:
    """One committed change. `kind`: one of the names above; `subject`: what changed, as the API
    returns it (an adapter version's dict, a bundle's {"bundle_id", "bundle_uri", "tasks", "moved"}, an alias
    event, a base model source); `base_model`: the name of the base model it concerns, if one."""

    kind: str
    subject: dict
    base_model: str | None


Notify = Callable[[list[Change]], None]


def adapter_change(row: dict) -> Change:
    """The change of registering adapter version `row` (an `adapter_dict`) with its status."""
    return Change(ADAPTER_KIND_BY_STATUS[row["status"]], row, row["base_model"]["name"])
