"""How the catalog watches itself: the `watch` schedule and the deployment triggers, as `hydracat
serve` declares them (infra/prefect.yaml declares the same; a test compares the two).

- ``sync-catalog/watch`` runs sync-catalog every `WATCH_INTERVAL_S` (one listing and one query
  when nothing is new), one run at a time (a run due while one is going is cancelled). It is also
  triggered at once by a new base model or alias (adapters pending for it may resolve now).
- ``consolidate/consolidate`` is triggered per base model once adapter versions of it stopped
  arriving for a quiet window (`QUIET_WINDOW_S`): a Proactive trigger whose `after` and `expect`
  are both the adapter events (`CONSOLIDATE_ON`), bucketed by the ``hydracat.base-model`` label.
  Each such event restarts its base model's window; when a window passes with none, the trigger
  fires once, and consolidate runs for that base model (``base_model`` from the last event). A burst
  of uploads is one run; the nightly stays as the safety net.
"""

from datetime import timedelta

from flows.events import BASE_MODEL_LABEL, EVENT_PREFIX
from registry.events import ADAPTER_REGISTERED, ADAPTER_RETIRED, BASE_MODEL_ALIASED, BASE_MODEL_REGISTERED

WATCH_INTERVAL_S = 300
QUIET_WINDOW_S = 600
CONSOLIDATE_ON = (EVENT_PREFIX + ADAPTER_REGISTERED, EVENT_PREFIX + ADAPTER_RETIRED)
SYNC_ON = (EVENT_PREFIX + BASE_MODEL_REGISTERED, EVENT_PREFIX + BASE_MODEL_ALIASED)
CONSOLIDATE_TRIGGER = "consolidate after adapter changes"
SYNC_TRIGGER = "sync after a base model change"


def consolidate_trigger(quiet_window_s: int = QUIET_WINDOW_S) -> dict:
    """The consolidate deployment's trigger, as prefect.yaml spells it."""
    return {
        "name": CONSOLIDATE_TRIGGER,
        "enabled": True,
        "posture": "Proactive",
        "match": {"prefect.resource.id": "hydracat.adapter.*"},
        "after": list(CONSOLIDATE_ON),
        "expect": list(CONSOLIDATE_ON),
        "for_each": [BASE_MODEL_LABEL],
        "threshold": 1,
        "within": quiet_window_s,
        "parameters": {"base_model": "{{ event.resource['" + BASE_MODEL_LABEL + "'] }}"},
    }


def sync_trigger() -> dict:
    """The watch deployment's trigger: a registered base model or alias starts a sync at once."""
    return {
        "name": SYNC_TRIGGER,
        "enabled": True,
        "posture": "Reactive",
        "match": {"prefect.resource.id": "hydracat.base-model.*"},
        "expect": list(SYNC_ON),
        "threshold": 1,
        "within": 0,
    }


def deployment_trigger(spec: dict):
    """A Prefect `DeploymentEventTrigger` from its prefect.yaml spelling."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(**spec | {"within": timedelta(seconds=spec["within"])})
