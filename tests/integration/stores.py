"""Helpers of the store tests: a Redis backend (single node or cluster) and stores on it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.store import Store


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
