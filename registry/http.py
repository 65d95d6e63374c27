"""HTTP API (FastAPI) over `registry.api.Registry`; responses use the Python API's JSON shapes.

Reads are open. Writes (rollback, retire, registering base models and aliases) need
``Authorization: Bearer <token>``: 401 without it, 403 with a wrong one, 503 when the server has
no token configured. Other packages add their routes through `create_app(routes=...)` (the flows
add the bucket-notification endpoint). Registry errors map to
404 (not found), 409 (conflict) and 400 (invalid request) with ``{"detail": message}``.
"""

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from registry.api import Registry
from registry.errors import ConflictError, NotFoundError, RegistryError

log = logging.getLogger(__name__)


def json_response(data: dict | list) -> Response:
    """The registry's dicts are plain JSON already: serialise once, skip FastAPI's encoder."""
    return Response(json.dumps(data), media_type="application/json")


class RollbackRequest(BaseModel):
    actor: str = "http"
    reason: str = "rollback"


class BaseModelRequest(BaseModel):
    name: str
    kind: str
    location: str
    revision: str | None = None
    aliases: list[str] = []


class AliasRequest(BaseModel):
    alias: str
    base_model: str


# adds routes to the app: (app, the write-token dependency, the registry)
AddRoutes = Callable[[FastAPI, Callable[..., None], Registry], None]


def create_app(registry: Registry, token: str | None, routes: Sequence[AddRoutes] = ()) -> FastAPI:
    app = FastAPI(title="hydracat registry", version="1")
    bearer = HTTPBearer(auto_error=False)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if not token:
            raise HTTPException(503, "writes are disabled: the server has no HYDRACAT_API_TOKEN")
        if credentials is None:
            raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong bearer token")

    @app.exception_handler(RegistryError)
    async def registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("registry request failed", exc_info=exc)
        return JSONResponse({"detail": "internal error, see the server log"}, status_code=500)

    @app.get("/v1/tasks/{task}/bundle")
    def current_bundle(task: str) -> Response:
        return json_response(registry.current_bundle(task))

    @app.get("/v1/tasks/{task}/history")
    def history(task: str) -> Response:
        return json_response(registry.history(task))

    @app.get("/v1/bundles/{bundle_id}")
    def bundle(bundle_id: str) -> Response:
        return json_response(registry.get_bundle(bundle_id))

    @app.get("/v1/adapters")
    def adapters(
        base_model: str | None = None, status: str | None = None, name: str | None = None
    ) -> Response:
        return json_response(registry.list_adapters(base_model=base_model, status=status, name=name))

    @app.get("/v1/base-models")
    def base_models() -> Response:
        return json_response(registry.list_base_models())

    @app.post("/v1/base-models", dependencies=[Depends(require_token)])
    def add_base_model(body: BaseModelRequest) -> dict:
        return registry.add_base_model(
            body.name, kind=body.kind, location=body.location, revision=body.revision, aliases=body.aliases
        )

    @app.post("/v1/base-models/aliases", dependencies=[Depends(require_token)])
    def add_alias(body: AliasRequest) -> dict:
        return registry.add_base_model_alias(body.alias, body.base_model)

    @app.post("/v1/tasks/{task}/rollback", dependencies=[Depends(require_token)])
    def rollback(task: str, body: RollbackRequest | None = None) -> dict:
        body = body or RollbackRequest()
        return registry.rollback(task, actor=body.actor, reason=body.reason)

    @app.post("/v1/adapters/{name}/{version}/retire", dependencies=[Depends(require_token)])
    def retire(name: str, version: str) -> dict:
        return registry.retire_adapter(name, version)

    for add_routes in routes:
        add_routes(app, require_token, registry)
    return app
