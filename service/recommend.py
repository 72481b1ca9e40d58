"""/recommend as one batched step: one Redis round trip and one engine call for many users."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.user_hash import user_hash_bucket
from service.engine import UserFeatures
from service.errors import ModelNotReady, StoreUnavailable
from service.metrics import Metrics
from service.runtime import LoadedModel
from service.schemas import RecommendRequest, RecommendResponse, ScoredItem
from service.store import Snapshot, Store


def features(model: LoadedModel, snap: Snapshot, exclude_seen: bool) -> UserFeatures:
    m = model.bundle.manifest
    events = snap.recent.events if snap.recent else []
    user = UserFeatures(
        user_hash_bucket(snap.user_id, m.user_hash_buckets),
        np.array([e.item for e in events], np.int64),
        np.array([e.action for e in events], np.int64),
        np.array([e.ts for e in events], np.int64),
    )
    tok = snap.tokens
    if tok is not None and len(tok.categories) and m.num_buckets:
        n, v = len(tok.categories), m.num_buckets
        user.hist_tokens = np.zeros((v, m.d_model), np.float32)
        user.hist_tokens[:n] = tok.tokens
        user.hist_mask = np.arange(v) < n
        user.hist_ts = np.zeros(v, np.int64)
        user.hist_ts[:n] = tok.newest[:, 0]
    if exclude_seen:
        seen = [user.items] + ([tok.items[tok.items > 0].astype(np.int64)] if tok is not None else [])
        user.seen = np.unique(np.concatenate(seen))
    return user


@dataclass
class Recommender:
    """The micro-batcher's handler. Reads the current model once per batch, so a hot reload never
    mixes two models inside one batch and in-flight batches finish on the model they started with."""

    current_model: Callable[[], LoadedModel | None]
    store: Store
    redis_timeout_s: float
    metrics: Metrics

    async def __call__(self, requests: list[RecommendRequest]) -> list[RecommendResponse]:
        model = self.current_model()
        if model is None:
            raise ModelNotReady("no model loaded yet")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.redis_timeout_s):
                snaps = await self.store.read(model.view, [r.user_id for r in requests], now=time.time())
        except TimeoutError:
            raise StoreUnavailable(f"redis did not answer within {self.redis_timeout_s}s") from None
        self.metrics.redis_seconds.labels("read").observe(time.perf_counter() - started)
        users = [features(model, s, r.exclude_seen) for s, r in zip(snaps, requests, strict=True)]
        started = time.perf_counter()
        ranked = await asyncio.to_thread(model.engine.rank, users, max(r.k for r in requests))
        self.metrics.engine_seconds.observe(time.perf_counter() - started)
        bundle = model.bundle
        return [
            RecommendResponse(
                user_id=r.user_id,
                model_version=model.version,
                items=[
                    ScoredItem(item_id=bundle.external_item(int(i)), score=float(s))
                    for i, s in zip(out.items[: r.k], out.scores[: r.k], strict=True)
                ],
                recent_events=len(u.items),
                history_tokens=int(u.hist_mask.sum()) if u.hist_mask is not None else 0,
            )
            for r, u, out in zip(requests, users, ranked, strict=True)
        ]
