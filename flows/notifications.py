"""Bucket notifications: ``POST /v1/events/object-created`` on `hydracat api` starts a sync of the
adapter folders an upload touched, at once, instead of waiting for the `watch` interval.

The body is the JSON an S3-compatible store posts for its object-created events: MinIO's webhook
target (``{"EventName", "Key", "Records": [...]}``) or an S3 event notification (``{"Records"}``),
each record naming ``s3.bucket.name`` and ``s3.object.key`` (URL-encoded). The token is the API's
write token (MinIO: ``MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_<ID>="Bearer <token>"``).

Answers 202 with ``{"started": [{"prefix", "flow_run_id"}], "ignored": [{"key", "reason"}]}``: one
run of the ``sync-catalog/sync-catalog`` deployment per adapter named (prefix
``adapters/<name>``, so every version of it is looked at; a sync finds the registered ones in one
query). Objects of another bucket, outside the store's root or outside ``adapters/`` (the bundles
the flows write, say) are ignored, not refused: the store would deliver them again and again. A
body that is not such JSON is refused with 400 and starts nothing; 503 when Prefect cannot be
reached (the store retries the delivery).
"""

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from hydraopt.formats.layout import ADAPTERS_PREFIX
from registry.api import Registry
from registry.store.base import InvalidKeyError

SYNC_DEPLOYMENT = "sync-catalog/sync-catalog"
CREATED = "s3:ObjectCreated:"


class MalformedNotification(ValueError):
    """The body is not an S3 / MinIO bucket notification."""


def created_objects(body: Any) -> list[tuple[str, str]]:
    """(bucket, key) of every object-created record of a notification body; MalformedNotification
    says what is wrong with one that is not such a notification."""
    if not isinstance(body, dict) or not isinstance(body.get("Records"), list):
        raise MalformedNotification('expected a bucket notification: {"Records": [...]}')
    created = []
    for i, record in enumerate(body["Records"]):
        try:
            name, s3 = record["eventName"], record["s3"]
            bucket, key = s3["bucket"]["name"], s3["object"]["key"]
        except (KeyError, TypeError) as error:
            raise MalformedNotification(
                f"record {i} has no eventName, s3.bucket.name or s3.object.key"
            ) from error
        if not all(isinstance(value, str) and value for value in (name, bucket, key)):
            raise MalformedNotification(f"record {i}: eventName, bucket name and object key must be strings")
        if name.startswith(CREATED):
            created.append((bucket, unquote_plus(key)))
    return created


def adapter_prefixes(registry: Registry, objects: list[tuple[str, str]]) -> tuple[list[str], list[dict]]:
    """The sync prefixes (``adapters/<name>``) of the created objects that are adapter files of the
    registry's store, and the others with why they are ignored."""
    prefixes: dict[str, None] = {}
    ignored = []
    for bucket, key in objects:
        try:
            relative = registry.store.key_for(f"s3://{bucket}/{key}") if registry.store else None
        except InvalidKeyError as error:
            ignored.append({"key": f"{bucket}/{key}", "reason": str(error)})
            continue
        parts = relative.removeprefix(ADAPTERS_PREFIX).split("/") if relative else []
        if relative is None:
            ignored.append({"key": f"{bucket}/{key}", "reason": "not in the registry's object store"})
        elif not relative.startswith(ADAPTERS_PREFIX) or len(parts) != 3:
            ignored.append(
                {"key": f"{bucket}/{key}", "reason": f"not an {ADAPTERS_PREFIX}<name>/<version>/ file"}
            )
        else:
            prefixes[ADAPTERS_PREFIX + parts[0]] = None
    return list(prefixes), ignored


def start_sync(prefix: str) -> str:
    """Start a run of the sync-catalog deployment for `prefix`; returns its flow run id."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # else Prefect would start a throwaway server of its own
        raise RuntimeError("PREFECT_API_URL is not set: no Prefect server to start it on")

    run = run_deployment(SYNC_DEPLOYMENT, parameters={"prefix": prefix}, timeout=0, as_subflow=False)
    return str(run.id)


def add_object_created_route(app: Any, require_token: Callable, registry: Registry) -> None:
    """Add ``POST /v1/events/object-created`` to the FastAPI `app` (behind `require_token`)."""
    from fastapi import Depends, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool

    @app.post("/v1/events/object-created", status_code=202, dependencies=[Depends(require_token)])
    async def object_created(request: Request) -> dict:
        try:
            objects = created_objects(await request.json())
        except ValueError as error:  # MalformedNotification, or a body that is not JSON
            raise HTTPException(400, f"not a bucket notification: {error}") from error
        prefixes, ignored = adapter_prefixes(registry, objects)
        started = []
        for prefix in prefixes:
            try:
                flow_run_id = await run_in_threadpool(start_sync, prefix)
            except Exception as error:  # the store delivers the notification again
                raise HTTPException(503, f"could not start a sync of {prefix!r}: {error}") from error
            started.append({"prefix": prefix, "flow_run_id": flow_run_id})
        return {"started": started, "ignored": ignored}
