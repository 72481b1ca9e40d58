"""Helpers of the store tests: a Redis backend (single node or cluster), stores and model views on it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from hypothesis import strategies as st

from model.bucketing import Event
from service import ids
from service.engine import Engine
from service.runtime import make_view
from service.store import Store, ensure_layout
from service.store_codec import MemoryRecord, State, Tokens, decode_memory, decode_state, decode_tokens
from service.user_state import ModelView, NewEvent

# (ts, item, action): a small ts range gives many ties and late (out-of-order) events.
event_streams = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 300), st.integers(1, 2)), min_size=0, max_size=60
)


async def view_on(store: Store, engine: Engine) -> ModelView:
    """The engine's model as a service sees it on this store: its catalogue registered in the
    store's ids (on a fresh prefix store ids equal the bundle's), the layout checked."""
    catalog = engine.bundle.catalog
    mapped = await ids.map_catalogue(
        store.redis, store.prefix, catalog.items, catalog.actions, catalog.categories
    )
    view = make_view(engine, mapped)
    await ensure_layout(store.redis, store.prefix, view)
    return view


def new_events(view: ModelView, user: str, stream: list[tuple[int, int, int]]) -> list[NewEvent]:
    """(ts, internal item, internal action) -> events in store ids."""
    items, actions = view.ids.items.to_store, view.ids.actions.to_store
    return [NewEvent(user, int(items[i]), int(actions[a]), ts) for ts, i, a in stream]


async def append_in_chunks(
    store: Store, view: ModelView, user: str, stream: list[tuple[int, int, int]], chunk: int, now: float
) -> list[Event]:
    """Append a stream in batches of ``chunk`` (batching must not matter); returns the events (store
    ids) with the seq numbers the store gives them."""
    new = new_events(view, user, stream)
    for lo in range(0, len(new), chunk):
        outcomes = await store.append(view, new[lo : lo + chunk], now=now)
        assert all(o.error is None for o in outcomes), outcomes
    return [Event(e.ts, seq, e.item, e.action) for seq, e in enumerate(new)]


async def stored(
    store: Store, view: ModelView, user: str
) -> tuple[State, Tokens | None, MemoryRecord | None]:
    """The user's state and the derived records of ``view``'s version, as Redis holds them once the
    user's logged events are folded."""
    await store.fold(view, [user])
    k = store.keys(user)
    state, tok, mem = await asyncio.gather(
        store.redis.get(k.state),
        store.redis.get(k.tokens(view.version)),
        store.redis.get(k.memory(view.version)),
    )
    return decode_state(state), decode_tokens(tok) if tok else None, decode_memory(mem) if mem else None


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


async def with_store(backend: Backend, prefix: str, fn, **kw: Any):  # type: ignore[no-untyped-def]
    client = backend.client()
    store = Store(client, prefix=prefix, **kw)
    try:
        return await fn(store)
    finally:
        await store.settle()
        await client.aclose()


def like(store: Store) -> Store:
    """Another store on the same client: what another worker process would have."""
    return Store(
        store.redis,
        prefix=store.prefix,
        max_buckets=store.max_buckets,
        max_history=store.max_history,
        fold_after=store.fold_after,
    )
