"""Dependencies as Annotated aliases, so route signatures read like declarations."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from service.config import Settings
from service.errors import Forbidden, ModelNotReady, Unauthorized
from service.runtime import LoadedModel
from service.store import Store

SCOPES = {"read": 0, "write": 1, "admin": 2}


# Dependencies are coroutines although none awaits: FastAPI runs a plain function in its thread
# pool, a hand-off per dependency per request (py-spy; docs/PERFORMANCE.md, "Dependencies off the
# thread pool").
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_model(request: Request) -> LoadedModel:
    model: LoadedModel | None = request.app.state.model
    if model is None:
        raise ModelNotReady(request.app.state.model_error or "model is loading")
    return model


def _granted_scope(settings: Settings, key: str) -> int | None:
    """The highest scope of ``key``. Every configured key is compared, in constant time each."""
    best = None
    for scope, keys in (
        ("read", settings.read_keys),
        ("write", settings.write_keys),
        ("admin", settings.admin_keys),
    ):
        for candidate in keys:
            if hmac.compare_digest(candidate.get_secret_value().encode(), key.encode()):
                best = max(best or 0, SCOPES[scope])
    return best


KEY_SCHEMES = {
    "APIKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}


def require(scope: str) -> dict[str, Any]:
    """Route options of a route that needs ``scope``: the check, and the key schemes in its OpenAPI
    operation (``document_keys`` declares them). The check reads the headers itself: declared as
    FastAPI security parameters (APIKeyHeader, HTTPBearer) they cost /recommend ~50 us of CPU per
    request, a quarter of what the whole HTTP floor costs (measured by hand; docs/PERFORMANCE.md,
    "Dependencies off the thread pool")."""
    needed = SCOPES[scope]

    async def check(request: Request) -> None:
        settings: Settings = request.app.state.settings
        if not settings.auth_enabled:
            return
        x_api_key = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization")
        key = x_api_key or (
            authorization[7:] if authorization and authorization.startswith("Bearer ") else None
        )
        if not key:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        granted = _granted_scope(settings, key)
        if granted is None:
            raise Unauthorized("invalid API key")
        if granted < needed:
            raise Forbidden(f"this API key lacks the '{scope}' scope")

    return {
        "dependencies": [Depends(check)],
        "openapi_extra": {"security": [{name: []} for name in KEY_SCHEMES]},
    }


def document_keys(app: FastAPI) -> None:
    """Add the key schemes that ``require`` names to the app's OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", KEY_SCHEMES)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
