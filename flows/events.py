"""The registry's changes as Prefect events: what automations and deployment triggers react to.

Every `registry.events.Change` a registry opened by the flows, the HTTP API or the CLI commits is
sent as one event (`emit_changes`, the `notify` of those registries), named ``hydracat.<kind>``:

- ``hydracat.adapter.registered``, ``.quarantined``, ``.pending``, ``.retired``: resource
  ``hydracat.adapter.<name>.<version>``; related: its base model (role ``base-model``) and, unless
  quarantined, its group (``group``); payload: status, reason, sha256, uri, adapter_type, rank.
- ``hydracat.bundle.published``: resource ``hydracat.bundle.<bundle id>``; related: its base model;
  payload: bundle_uri, tasks (the first `MAX_EVENT_TASKS`), task_count, moved (tasks now on it).
- ``hydracat.alias.rolled-back``: resource ``hydracat.task.<task>``; related: the bundles left and
  restored (``from-bundle``, ``to-bundle``); payload: alias, reason, actor.
- ``hydracat.base-model.registered``, ``.aliased``: resource ``hydracat.base-model.<name>``;
  payload: kind, location, revision, aliases.

Adapter and bundle resources carry the label ``hydracat.base-model`` (the base model's name): the
consolidate deployment's trigger buckets its events by it (`flows.triggers`). Inside a flow or task
run Prefect relates each event to the run as well. Outside one (the CLI, the HTTP API) events go to
the server PREFECT_API_URL names; with none set there is no server to tell, and nothing is sent.
"""

import logging

from registry.events import (
    ADAPTER_KINDS,
    ALIAS_ROLLED_BACK,
    BASE_MODEL_ALIASED,
    BASE_MODEL_REGISTERED,
    BUNDLE_PUBLISHED,
    Change,
)
from registry.names import group_label

EVENT_PREFIX = "hydracat."
BASE_MODEL_LABEL = "hydracat.base-model"
MAX_EVENT_TASKS = 1000  # task names in a bundle.published payload (Prefect refuses events over 1.5 MB)

log = logging.getLogger(__name__)


def base_model_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"hydracat.base-model.{name}", "prefect.resource.name": name}


def related_base_model(name: str) -> dict[str, str]:
    return base_model_resource(name) | {"prefect.resource.role": "base-model"}


def adapter_event(change: Change) -> dict:
    row = change.subject
    name, version, base = row["name"], row["version"], row["base_model"]
    related = [related_base_model(base["name"])]
    if row["status"] != "quarantined":  # a quarantined version is in no group
        label = group_label(base, row["adapter_type"], row["modules_digest"])
        related.append({"prefect.resource.id": f"hydracat.group.{label}", "prefect.resource.role": "group",
                        "prefect.resource.name": label})  # fmt: skip
    payload = {key: row[key] for key in ("status", "sha256", "uri", "adapter_type", "rank")}
    return {
        "resource": {
            "prefect.resource.id": f"hydracat.adapter.{name}.{version}",
            "prefect.resource.name": f"{name}/{version}",
            "hydracat.adapter": name,
            "hydracat.version": version,
            BASE_MODEL_LABEL: base["name"],
        },
        "related": related,
        "payload": payload | {"reason": row["quarantine_reason"] or row["pending_reason"]},
    }


def bundle_event(change: Change) -> dict:
    bundle, base = change.subject, change.base_model or ""
    return {
        "resource": {
            "prefect.resource.id": f"hydracat.bundle.{bundle['bundle_id']}",
            "prefect.resource.name": bundle["bundle_id"],
            BASE_MODEL_LABEL: base,
        },
        "related": [related_base_model(base)],
        "payload": {
            "bundle_uri": bundle["bundle_uri"],
            "tasks": bundle["tasks"][:MAX_EVENT_TASKS],
            "task_count": len(bundle["tasks"]),
            "moved": bundle["moved"][:MAX_EVENT_TASKS],
        },
    }


def rollback_event(change: Change) -> dict:
    event = change.subject
    bundles = [
        {"prefect.resource.id": f"hydracat.bundle.{event[key]}", "prefect.resource.role": role}
        for key, role in (("from_bundle_id", "from-bundle"), ("to_bundle_id", "to-bundle"))
        if event[key]
    ]
    return {
        "resource": {
            "prefect.resource.id": f"hydracat.task.{event['task']}",
            "prefect.resource.name": event["task"],
        },
        "related": bundles,
        "payload": {key: event[key] for key in ("alias", "reason", "actor")},
    }


def base_model_event(change: Change) -> dict:
    source = change.subject
    payload = {key: source[key] for key in ("kind", "location", "revision", "aliases")}
    resource = base_model_resource(source["name"]) | {BASE_MODEL_LABEL: source["name"]}
    return {"resource": resource, "related": [], "payload": payload}


def prefect_event(change: Change) -> dict:
    """`emit_event`'s keyword arguments for `change`."""
    if change.kind in ADAPTER_KINDS:
        fields = adapter_event(change)
    elif change.kind == BUNDLE_PUBLISHED:
        fields = bundle_event(change)
    elif change.kind == ALIAS_ROLLED_BACK:
        fields = rollback_event(change)
    elif change.kind in (BASE_MODEL_REGISTERED, BASE_MODEL_ALIASED):
        fields = base_model_event(change)
    else:
        raise ValueError(f"no Prefect event for registry change {change.kind!r}")
    return {"event": EVENT_PREFIX + change.kind, **fields}


def emit_changes(changes: list[Change]) -> None:
    """Send `changes` to the Prefect server (queued: Prefect's events worker delivers them, and
    drains its queue before the process exits). Without a run or PREFECT_API_URL: nothing to tell."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not (PREFECT_API_URL.value() or FlowRunContext.get() or TaskRunContext.get()):
        log.debug("no Prefect server (PREFECT_API_URL is unset): %d registry events not sent", len(changes))
        return
    for change in changes:
        emit_event(**prefect_event(change))
