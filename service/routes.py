"""HTTP only: parse, authorise, call the domain, shape the answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import ModelDep, SettingsDep, StoreDep, require
from service.errors import StoreUnavailable
from service.ingest import validate_events
from service.schemas import (
    EventsRequest,
    EventsResponse,
    Problem,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
)

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": Problem} for c in (400, 401, 403, 413, 422, 503)}


@router.post("/recommend", response_model=RecommendResponse, responses=ERRORS, dependencies=[require("read")])
async def recommend(body: RecommendRequest, request: Request, _model: ModelDep) -> RecommendResponse:
    """Top-k items for a user from their stored history tokens and recent events."""
    return await request.app.state.batcher.submit(body)  # type: ignore[no-any-return]


@router.post("/events", response_model=EventsResponse, responses=ERRORS, dependencies=[require("write")])
async def post_events(
    body: EventsRequest, request: Request, model: ModelDep, store: StoreDep, settings: SettingsDep
) -> EventsResponse:
    """Append interactions. Acknowledged only once Redis has them; all-or-nothing per request."""
    now = time.time()
    events = validate_events(model, body.events, now, settings.max_future_s)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.redis_timeout_s):
            result = await store.append(model.view, events, now=now)
    except TimeoutError:
        raise StoreUnavailable(f"redis did not answer within {settings.redis_timeout_s}s") from None
    metrics = request.app.state.metrics
    metrics.redis_seconds.labels("append").observe(time.perf_counter() - started)
    metrics.events.labels("accepted").inc(result.accepted)
    metrics.events.labels("duplicate").inc(result.duplicates)
    return EventsResponse(accepted=result.accepted, duplicates=result.duplicates)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about Redis or the model."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Problem}})
async def readyz(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """Ready: a warmed-up model is loaded and Redis answers."""
    state = request.app.state
    problems = []
    if state.model is None:
        problems.append(f"model not loaded: {state.model_error or 'loading'}")
    try:
        async with asyncio.timeout(settings.redis_timeout_s):
            await store.ping()
    except (TimeoutError, StoreUnavailable):
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
    """The manifest of the model being served."""
    return {**model.bundle.manifest.model_dump(), "device": model.engine.device}


@router.post("/admin/reload", responses=ERRORS, dependencies=[require("admin")])
async def reload(request: Request, body: ReloadRequest | None = None) -> dict[str, str]:
    """Load a bundle and swap it in atomically; on any problem the current model keeps serving."""
    model = await request.app.state.reload(body.bundle if body else None)
    return {"model_version": model.version, "device": model.engine.device}


async def noop() -> dict[str, str]:
    """The HTTP floor for load tests: same app, same server, no work (only with CAUSEREC_NOOP_ROUTE)."""
    return {}
