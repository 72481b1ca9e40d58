"""/recommend in two batched stages: stored answers first (AnswerLookup), then, for the requests
without one, one Redis round trip for many users, the backbone only for users whose query state is
not cached, one scoring call for all (Recommender).

A user's query state (the encoder's output) and answer change only when the user's events do, so
both are kept in Redis per model version and reused until an event moves the user's sequence
number: a repeated read of an unchanged user costs one round trip; a read after an event costs two,
the backbone and the scorer. Each request of a batch succeeds or fails on its own: a user whose
stored state is unreadable gets an answer as a new user would, with a warning, and never fails the
others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import TypeAdapter

from model.user_hash import user_hash_bucket
from service.engine import UserFeatures
from service.errors import ModelNotReady, StoreUnavailable, UserStateCorrupt
from service.metrics import Metrics
from service.runtime import LoadedModel
from service.schemas import RecommendRequest, RecommendResponse, ScoredItem
from service.store import Store
from service.store_codec import Query
from service.store_types import UserRead
from service.user_state import seen_items


def features(model: LoadedModel, read: UserRead) -> UserFeatures:
    """The encoder's inputs for one user, in the bundle's ids."""
    m, ids = model.bundle.manifest, model.view.ids
    events = read.state.recent if read.state else []
    items = ids.items.internal(np.array([e.item for e in events], np.int64))
    known = items > 0  # events of items this bundle does not know are left out of its input
    user = UserFeatures(
        user_hash_bucket(read.user_id, m.user_hash_buckets),
        items[known],
        np.maximum(ids.actions.internal(np.array([e.action for e in events], np.int64)), 0)[known],
        np.array([e.ts for e in events], np.int64)[known],
    )
    tok = read.tokens
    if tok is not None and len(tok.categories) and m.num_buckets:
        n, v = len(tok.categories), m.num_buckets
        user.hist_tokens = np.zeros((v, m.d_model), np.float32)
        user.hist_tokens[:n] = tok.tokens
        user.hist_mask = np.arange(v) < n
        user.hist_ts = np.zeros(v, np.int64)
        user.hist_ts[:n] = tok.newest[:, 0]
    return user


def scored(model: LoadedModel, internal: int, score: float, include: Sequence[str]) -> ScoredItem:
    b = model.bundle
    return ScoredItem(
        item_id=b.external_item(internal),
        score=score,
        title=b.title(internal) if "title" in include else None,
        categories=b.category_names(internal) if "categories" in include else None,
    )


def shape(request: RecommendRequest) -> str:
    """What, besides the user and their state, decides the answer: the key of a stored answer."""
    return f"{request.k}:{int(request.exclude_seen)}:{','.join(sorted(set(request.include)))}"


_render = TypeAdapter(RecommendResponse).dump_json


@dataclass
class AnswerLookup:
    """The first stage of /recommend: answers stored for unchanged users (None for the others).

    An answer depends only on the user's state (its sequence number), the model version and the
    request's shape, so the store keeps rendered answers (``Store.answers_ttl_s``) and a repeated
    read of an unchanged user is one round trip: no decoding, no model call, no rendering. Its
    batcher does not wait for a batch to fill (nothing here gains from a larger batch but the one
    round trip); requests without an answer go on to the Recommender's batcher, which does."""

    current_model: Callable[[], LoadedModel | None]
    store: Store
    metrics: Metrics

    async def __call__(self, requests: list[RecommendRequest]) -> list[bytes | None | Exception]:
        model = self.current_model()
        if model is None:
            raise ModelNotReady("no model loaded yet")
        found = await self.store.answers(
            model.view, [q.user_id for q in requests], [shape(q) for q in requests]
        )
        hits = sum(answer is not None for answer in found)
        self.metrics.answer_cache.labels("hit").inc(hits)
        self.metrics.answer_cache.labels("miss").inc(len(found) - hits)
        return list(found)


@dataclass
class Recommender:
    """The micro-batcher's handler: each request's answer, computed, as the JSON body to send (and
    stored for the AnswerLookup). Reads the current model once per batch, so a hot reload never
    mixes two models inside one batch and in-flight batches finish on the model they started with."""

    current_model: Callable[[], LoadedModel | None]
    store: Store
    metrics: Metrics
    query_cache: bool = True

    async def __call__(self, requests: list[RecommendRequest]) -> list[bytes | Exception]:
        model = self.current_model()
        if model is None:
            raise ModelNotReady("no model loaded yet")
        started = time.perf_counter()
        reads = await self.store.read(model.view, [r.user_id for r in requests])
        self.metrics.redis_seconds.labels("read").observe(time.perf_counter() - started)
        warnings: list[list[str]] = [[] for _ in reads]
        for i, r in enumerate(reads):
            if isinstance(r.error, UserStateCorrupt):
                warnings[i].append(f"{r.error}; recommended as for a new user")
                self.metrics.errors.labels("/recommend", "UserStateCorrupt").inc()
                r.error = None
        queries, encoded = await self._queries(model, reads)
        seen = [
            model.view.ids.items.internal(seen_items(r.state, r.tokens, model.view))
            if q.exclude_seen and r.state is not None
            else None
            for q, r in zip(requests, reads, strict=True)
        ]
        started = time.perf_counter()
        ranked = await asyncio.to_thread(model.engine.score, queries, seen, max(q.k for q in requests))
        self.metrics.engine_seconds.labels("score").observe(time.perf_counter() - started)
        out: list[bytes | Exception] = []
        keep = []
        for q, r, found, notes in zip(requests, reads, ranked, warnings, strict=True):
            if r.error is not None:
                out.append(r.error)
                continue
            body = _render(
                RecommendResponse(
                    user_id=q.user_id,
                    model_version=model.version,
                    items=[
                        scored(model, int(i), float(s), q.include)
                        for i, s in zip(found.items[: q.k], found.scores[: q.k], strict=True)
                    ],
                    recent_events=len(r.state.recent) if r.state else 0,
                    history_tokens=len(r.tokens.categories) if r.tokens is not None else 0,
                    warnings=notes,
                )
            )
            out.append(body)
            if r.state is not None and not notes:  # an unknown user has nothing to stamp it with
                keep.append((r, shape(q), body))
        cache = [
            (r, Query(model.version, r.state.next_seq, queries[i]))
            for i, r in enumerate(reads)
            if i in encoded and r.state is not None and self.query_cache
        ]
        # The reads' folds and the caches: the answers do not need them (unwritten folds stay logged).
        with contextlib.suppress(StoreUnavailable):
            await self.store.write_derived(model.view, cache, keep, reads)
        return out

    async def _queries(self, model: LoadedModel, reads: list[UserRead]) -> tuple[np.ndarray, set[int]]:
        """Every user's query vector (cached ones as stored, the others encoded in one call), and
        which of them were encoded."""
        queries = np.zeros((len(reads), model.view.d_model), np.float32)
        missing = []
        for i, r in enumerate(reads):
            if r.query is not None and self.query_cache:
                queries[i] = r.query.vector
            else:
                missing.append(i)
        self.metrics.query_cache.labels("hit").inc(len(reads) - len(missing))
        self.metrics.query_cache.labels("miss").inc(len(missing))
        if missing:
            started = time.perf_counter()
            users = [features(model, reads[i]) for i in missing]
            queries[missing] = await asyncio.to_thread(model.engine.encode, users)
            self.metrics.engine_seconds.labels("encode").observe(time.perf_counter() - started)
        return queries, set(missing)
