"""Dependencies as Annotated aliases, so route signatures read like declarations."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from service.config import Settings
from service.errors import Forbidden, ModelNotReady, Unauthorized
from service.runtime import LoadedModel
from service.store import Store

SCOPES = {"read": 0, "write": 1, "admin": 2}


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def get_model(request: Request) -> LoadedModel:
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


def require(scope: str):  # type: ignore[no-untyped-def]
    needed = SCOPES[scope]

    async def check(
        request: Request,
        x_api_key: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        settings = get_settings(request)
        if not settings.auth_enabled:
            return
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

    return Depends(check)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
