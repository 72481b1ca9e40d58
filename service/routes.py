"""HTTP only: parse, authorise, call the domain, shape the answer."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import ModelDep, SettingsDep, StoreDep, get_model, require
from service.errors import EventsNotApplied, StoreUnavailable, UnknownUser, UserStateCorrupt
from service.ingest import validate_events
from service.schemas import (
    EventsRequest,
    EventsResponse,
    Id,
    Problem,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    UserResult,
    UserState,
)
from service.users import describe

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": Problem} for c in (400, 401, 403, 409, 413, 422, 503)}


@router.post("/recommend", response_model=RecommendResponse, responses=ERRORS, **require("read"))
async def recommend(body: RecommendRequest, request: Request) -> Response:
    """Top-k items for a user from their stored history tokens and recent events."""
    await get_model(request)  # 503 with the reason; called, not injected: no dependency to resolve
    state = request.app.state
    # An answer stored for this user and request shape, else one computed (and stored); both are
    # the rendered body, sent as is.
    answer = await state.lookups.submit(body) if state.lookups else None
    if answer is None:
        answer = await state.batcher.submit(body)
    return Response(answer, media_type="application/json")


@router.post("/events", response_model=EventsResponse, responses=ERRORS, **require("write"))
async def post_events(
    body: EventsRequest, request: Request, model: ModelDep, store: StoreDep, settings: SettingsDep
) -> EventsResponse:
    """Append interactions. Acknowledged only once Redis has them; atomic per user. If some users
    fail, the others are still applied and the answer (503, or 409 for an unusable stored state)
    lists each user's outcome: retry with the same event_ids."""
    now = time.time()
    events = validate_events(model, body.events, now, settings.max_future_s)
    started = time.perf_counter()
    outcomes = await store.append(model.view, events, now=now)
    metrics = request.app.state.metrics
    metrics.redis_seconds.labels("append").observe(time.perf_counter() - started)
    users = [
        UserResult(
            user_id=o.user_id,
            accepted=o.accepted,
            duplicates=o.duplicates,
            error=str(o.error) if o.error else None,
        )
        for o in outcomes
    ]
    accepted, duplicates = sum(u.accepted for u in users), sum(u.duplicates for u in users)
    metrics.events.labels("accepted").inc(accepted)
    metrics.events.labels("duplicate").inc(duplicates)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        retryable = any(not isinstance(o.error, UserStateCorrupt) for o in failed)
        raise EventsNotApplied(
            f"events of {len(failed)} of {len(users)} user(s) were not applied; the others were",
            users,
            retryable,
        )
    return EventsResponse(accepted=accepted, duplicates=duplicates, users=users)


@router.get(
    "/users/{user_id}",
    response_model=UserState,
    responses={**ERRORS, 404: {"model": Problem}},
    **require("read"),
)
async def get_user(user_id: Id, model: ModelDep, store: StoreDep) -> UserState:
    """A user's stored state as the served model sees it: recent events, history buckets (which
    of them the history tokens cover), freshness of the derived state, and bytes stored."""
    found = await store.inspect(model.view, user_id)
    if found is None:
        raise UnknownUser(f"no stored state for user {user_id!r}: post events for it first")
    return await describe(model, store, user_id, found)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about Redis or the model."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Problem}})
async def readyz(request: Request, store: StoreDep) -> JSONResponse:
    """Ready: a warmed-up model is loaded and Redis answers."""
    state = request.app.state
    problems = []
    if state.model is None:
        problems.append(f"model not loaded: {state.model_error or 'loading'}")
    try:
        await store.ping()
    except StoreUnavailable:
        problems.append("redis unreachable")
    if problems:
        return JSONResponse({"detail": "; ".join(problems)}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(
        {"status": "ready", "model_version": state.model.version, "device": state.model.engine.device}
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    request.app.state.metrics.queue_depth.set(request.app.state.batcher.depth)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", responses={503: {"model": Problem}})
async def model_info(model: ModelDep) -> dict[str, Any]:
    """The manifest of the model being served, its device and its actions."""
    return {
        **model.bundle.manifest.model_dump(),
        "device": model.engine.device,
        "actions": model.bundle.catalog.actions,
    }


@router.post("/admin/reload", responses=ERRORS, **require("admin"))
async def reload(request: Request, body: ReloadRequest | None = None) -> dict[str, str]:
    """Load a bundle and swap it in atomically; on any problem the current model keeps serving."""
    model = await request.app.state.reload(body.bundle if body else None)
    return {"model_version": model.version, "device": model.engine.device}


async def noop() -> dict[str, str]:
    """The HTTP floor for load tests: same app, same server, no work (only with CAUSEREC_NOOP_ROUTE)."""
    return {}
