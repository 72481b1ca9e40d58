"""Helpers of the store tests: a Redis backend (single node or cluster) and stores on it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from hypothesis import strategies as st

from model.bucketing import Event
from service.store import ModelView, NewEvent, Store

# (ts, item, action): a small ts range gives many ties and late (out-of-order) events.
event_streams = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 300), st.integers(1, 2)), min_size=0, max_size=60
)


async def append_in_chunks(
    store: Store, view: ModelView, user: str, stream: list[tuple[int, int, int]], chunk: int, now: float
) -> list[Event]:
    """Append a stream in batches of ``chunk`` (batching must not matter); returns the events with
    the seq numbers the store gives them."""
    new = [NewEvent(user, item, action, ts) for ts, item, action in stream]
    for lo in range(0, len(new), chunk):
        await store.append(view, new[lo : lo + chunk], now=now)
    return [Event(ts, seq, item, action) for seq, (ts, item, action) in enumerate(stream)]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@dataclass(frozen=True)
class Backend:
    url: str
    cluster: bool

    def client(self) -> aioredis.Redis:
        if self.cluster:
            return aioredis.RedisCluster.from_url(self.url, socket_timeout=10, max_connections=200)  # type: ignore[return-value]
        return aioredis.Redis.from_url(self.url, socket_timeout=10, max_connections=200)


async def with_store(backend: Backend, prefix: str, fn, **kw):  # type: ignore[no-untyped-def]
    client = backend.client()
    try:
        return await fn(Store(client, prefix=prefix, per_user_transactions=backend.cluster, **kw))
    finally:
        await client.aclose()


def like(store: Store) -> Store:
    """Another store on the same client: what another worker process would have."""
    return Store(store.redis, prefix=store.prefix, per_user_transactions=store.per_user_transactions)


_PROCESSES: dict[int, list[Store]] = {}


def processes(store: Store) -> list[Store]:
    """Five stores on one connection pool, each with its own write lock: like five worker processes."""
    key = id(store)
    if key not in _PROCESSES:
        _PROCESSES[key] = [store] + [like(store) for _ in range(4)]
    return _PROCESSES[key]
