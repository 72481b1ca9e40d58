"""create_app: settings, Redis pool, model, batcher and signal handler live in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from service.batching import MicroBatcher
from service.config import Settings
from service.deps import document_keys
from service.errors import (
    BundleError,
    CauserecError,
    EventsNotApplied,
    Forbidden,
    InvalidEvents,
    ModelNotReady,
    Overloaded,
    StoreConflict,
    StoreUnavailable,
    Unauthorized,
    UnknownUser,
    UserStateCorrupt,
)
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import RequestContext, request_id
from service.recommend import AnswerLookup, Recommender
from service.redis_client import connect
from service.routes import noop, router
from service.runtime import LoadedModel, load_model
from service.store import Store

log = logging.getLogger("causerec")

# Domain error -> (HTTP status, extra headers). The one place that knows HTTP codes.
STATUS: dict[type[CauserecError], tuple[int, dict[str, str]]] = {
    Unauthorized: (401, {"WWW-Authenticate": "ApiKey"}),
    Forbidden: (403, {}),
    InvalidEvents: (422, {}),
    UserStateCorrupt: (409, {}),
    UnknownUser: (404, {}),
    BundleError: (422, {}),
    StoreUnavailable: (503, {"Retry-After": "1"}),
    StoreConflict: (503, {"Retry-After": "1"}),
    ModelNotReady: (503, {"Retry-After": "5"}),
    Overloaded: (503, {"Retry-After": "1"}),
}


def _redis_client(settings: Settings) -> Redis:
    return connect(
        settings.redis_url,
        cluster=settings.redis_cluster,
        timeout_s=settings.redis_timeout_s,
        max_connections=settings.redis_max_connections,
    )


def make_store(redis: Redis, settings: Settings) -> Store:
    return Store(
        redis,
        prefix=settings.key_prefix,
        dedup_retention_s=settings.dedup_retention_s,
        derived_ttl_s=settings.derived_ttl_s,
        answers_ttl_s=settings.answers_ttl_s,
        user_ttl_s=settings.user_ttl_s,
        max_buckets=settings.max_categories,
        max_history=settings.max_history,
        timeout_s=settings.redis_timeout_s,
        fold_after=settings.fold_after_events,
        fold_in_background=True,  # an /events answer waits for Redis to have the events, not for folds
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.settings, state.metrics = settings, metrics
        state.model, state.model_error = None, None
        state.redis = _redis_client(settings)
        state.store = make_store(state.redis, settings)
        metrics.watch_store(lambda: state.store.counters)
        reload_lock = asyncio.Lock()

        async def reload(path: str | None = None) -> LoadedModel:
            async with reload_lock:
                bundle = Path(path) if path else settings.bundle
                new = await load_model(
                    bundle,
                    state.redis,
                    settings.key_prefix,
                    settings.device,
                    settings.intra_op_threads,
                    retrieval=settings.retrieval,
                    index_ef=settings.index_ef,
                )
                state.model, state.model_error = new, None  # atomic swap: batches hold their own reference
                # The app and the model live until the next reload: moved out of the collector's
                # view, full collections stop scanning them (they paused the loop 30-170 ms under
                # a 1,000-event batch).
                gc.collect()
                gc.freeze()
                metrics.model_info.clear()
                metrics.model_info.labels(new.version, new.engine.device).set(1)
                log.info("serving model %s from %s on %s", new.version, bundle, new.engine.device)
                return new

        async def initial_load() -> None:
            delay = 0.5
            while True:
                try:
                    await reload()
                    return
                except StoreUnavailable as exc:  # the catalogue's ids live in Redis: wait for it
                    state.model_error = str(exc)
                    log.warning("model not loaded yet, retrying in %.1fs: %s", delay, exc)
                except CauserecError as exc:
                    state.model_error = str(exc)
                    log.error("model not loaded: %s", exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

        def on_sighup() -> None:
            async def run() -> None:
                try:
                    await reload()
                except CauserecError as exc:
                    log.error("reload on SIGHUP rejected, old model keeps serving: %s", exc)

            asyncio.get_running_loop().create_task(run())

        state.reload = reload
        recommender = Recommender(lambda: state.model, state.store, metrics, settings.query_cache)
        state.batcher = MicroBatcher(
            recommender,
            settings.max_batch_size,
            settings.max_wait_ms,
            settings.max_queue,
            on_batch=metrics.batch_size.observe,
        )
        state.batcher.start()
        state.lookups = None
        if settings.answers_ttl_s:
            lookup = AnswerLookup(lambda: state.model, state.store, metrics)
            state.lookups = MicroBatcher(lookup, settings.max_batch_size, 0, settings.max_queue)
            state.lookups.start()
        loader = asyncio.create_task(initial_load())
        loop = asyncio.get_running_loop()
        # Only the main thread may own signals (not so under some test runners): the admin route remains.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        if not settings.auth_enabled:
            log.warning("no API keys configured: every route is open (set CAUSEREC_WRITE_KEYS etc.)")
        try:
            yield
        finally:
            loader.cancel()
            await state.batcher.stop()
            if state.lookups:
                await state.lookups.stop()
            await state.store.settle()  # folds appends started: their events are logged either way
            await state.redis.aclose()

    app = FastAPI(
        title="causerec",
        version="0.1.0",
        lifespan=lifespan,
        description="Generative recommendations (HSTU + CAUSE history compression) served from Redis state.",
    )
    app.include_router(router)
    document_keys(app)
    # The explorer page: static files, no build step; it talks to the API like any client.
    app.mount("/ui", StaticFiles(directory=Path(__file__).with_name("ui"), html=True), name="ui")
    if settings.noop_route:
        app.add_api_route("/noop", noop, methods=["POST"], include_in_schema=False)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(CauserecError)
    async def domain_error(request: Request, exc: CauserecError) -> JSONResponse:
        status, headers = next((v for k, v in STATUS.items() if isinstance(exc, k)), (500, {}))
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.errors.labels(route, type(exc).__name__).inc()
        body: dict[str, object] = {"detail": str(exc), "request_id": request_id.get()}
        if isinstance(exc, InvalidEvents):
            body["detail"] = {"message": str(exc), "invalid": [i.model_dump() for i in exc.invalid]}
        if isinstance(exc, EventsNotApplied):
            status, headers = (503, {"Retry-After": "1"}) if exc.retryable else (409, {})
            body["detail"] = {"message": str(exc), "users": [u.model_dump() for u in exc.results]}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.errors.labels(route, "validation").inc()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        # A body that is not JSON at all is a malformed request (400), not invalid content (422).
        status = 400 if any(e.get("type") == "json_invalid" for e in exc.errors()) else 422
        return JSONResponse({"detail": detail, "request_id": request_id.get()}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """Framework errors (unparsable body, unknown route, wrong method) in the same shape as ours."""
        return JSONResponse(
            {"detail": exc.detail, "request_id": request_id.get()},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error (request %s)", request_id.get())
        metrics.errors.labels(getattr(request.scope.get("route"), "path", "unmatched"), "internal").inc()
        return JSONResponse({"detail": "internal error", "request_id": request_id.get()}, status_code=500)

    return app
