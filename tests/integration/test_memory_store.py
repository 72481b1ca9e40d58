"""The memory compressor's store path (service.memory_store) against a real redis-server and a real
3-master Redis Cluster: incremental folding == folding the batch history in torch, whatever the
batching, arrival order, concurrency or model change."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from model.bucketing import Event, split_recent
from model.samples import pad_segments
from model.train import load_model as load_torch_model
from service.errors import BundleError
from service.runtime import load_engine
from service.store import Store
from service.store_codec import decode_events
from service.user_state import ModelView, NewEvent
from tests.integration.stores import append_in_chunks, event_streams, like, run, stored, view_on, with_store

pytestmark = pytest.mark.integration
_ids = itertools.count()


@pytest.fixture(scope="module")
def engine(memory_bundle):  # type: ignore[no-untyped-def]
    return load_engine(memory_bundle, device="cpu")


@pytest.fixture(scope="module")
def torch_model(memory_run):  # type: ignore[no-untyped-def]
    return load_torch_model(memory_run)


def expected_tokens(torch_model, history: list[Event], initial_shift: float = 0.0) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The model's own sequential fold of the batch history (model.samples' segments)."""
    segs = {k: torch.from_numpy(v) for k, v in pad_segments(history, torch_model.cfg.segment_len).items()}
    compressor = torch_model.compressor
    with torch.no_grad():
        memory = (compressor.initial + initial_shift)[None]
        for j in range(len(segs["seg_items"])):
            memory = compressor.fold(torch_model, memory, *(segs[k][j : j + 1] for k in segs))
    return memory[0].numpy()


async def check_against_batch(
    store: Store, view: ModelView, torch_model, user: str, events: list[Event], initial_shift: float = 0.0
) -> None:  # type: ignore[no-untyped-def]
    state, tokens, memory = await stored(store, view, user)
    history, window = split_recent(events, view.recent_len)
    assert [(e.ts, e.item, e.action) for e in state.recent] == [(e.ts, e.item, e.action) for e in window]
    stored_history = decode_events(await store.redis.get(store.keys(user).history) or b"")
    assert [(e.ts, e.item, e.action) for e in stored_history] == [(e.ts, e.item, e.action) for e in history]
    assert state.history_len == len(history)
    if not history:
        assert tokens is None
        return
    assert (tokens.version, tokens.history_seq) == (view.version, state.history_seq)
    assert (memory.version, memory.history_seq) == (view.version, state.history_seq)
    assert view.memory is not None
    assert memory.folded == len(history) - len(history) % view.memory.segment_len
    assert tokens.newest[:, 0].tolist() == [history[-1].ts] * view.num_buckets
    np.testing.assert_allclose(tokens.tokens, expected_tokens(torch_model, history, initial_shift), atol=1e-5)
    exclude = [int(i) for i in tokens.exclude]
    assert exclude == list(dict.fromkeys(e.item for e in reversed(history)))[: len(exclude)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=event_streams, chunk=st.integers(1, 7))
# Always run: a late event older than the whole folded history (random streams find it only sometimes).
@example(stream=[(100 + i, 1 + i, 1) for i in range(30)] + [(5, 77, 2), (200, 9, 1)], chunk=1)
def test_incremental_folding_equals_the_batch_fold_in_torch(backend, engine, torch_model, stream, chunk):  # type: ignore[no-untyped-def]
    user = f"mem-{next(_ids)}"

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        events = await append_in_chunks(store, view, user, stream, chunk, time.time())
        if events:
            await check_against_batch(store, view, torch_model, user, events)

    run(with_store(backend, "memprop", go))


def test_an_in_order_event_folds_one_segment_and_reads_no_history(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """Incremental: after 200 history events, each new event (folded as it comes: fold_after=1)
    costs one fold of one row (the open segment, or the segment it completes), and the raw history
    is only appended to, never read."""
    rows: list[int] = []

    def counting_fold(memory: np.ndarray, segments: dict[str, np.ndarray]) -> np.ndarray:
        rows.append(len(memory))
        return engine.fold(memory, segments)  # type: ignore[no-any-return]

    async def go(store: Store):  # type: ignore[no-untyped-def]
        served = await view_on(store, engine)
        assert served.memory is not None
        view = replace(served, memory=replace(served.memory, fold=counting_fold))
        s = served.memory.segment_len
        await store.append(view, [NewEvent("long", 1 + i % 300, 1, i) for i in range(208)], now=0.0)
        # Not a whole number of events: decoding it would raise, so any read of it fails the test.
        await store.redis.set(store.keys("long").history, b"\xff" * 5)
        for i in range(208, 208 + 2 * s):
            rows.clear()
            await store.append(view, [NewEvent("long", 7, 1, i)], now=0.0)
            await store.settle()
            assert rows == [1]
        assert len(await store.redis.get(store.keys("long").history)) == 5 + 2 * s * 14

    run(with_store(backend, prefix, go, fold_after=1))


def test_a_new_model_refolds_from_the_raw_history(backend, prefix, engine, torch_model):  # type: ignore[no-untyped-def]
    """Another model version (here: another M_0) is never served the old memory: reads and bulk
    recompute refold every user from the stored raw history."""
    users = {
        f"nm{u}": [Event(10 * i, i, 1 + (u * 31 + i * 7) % 300, 1) for i in range(25 + u)] for u in range(6)
    }

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        assert view.memory is not None
        other = replace(
            view, version="memory-model-02", memory=replace(view.memory, initial=view.memory.initial + 1.0)
        )
        for user, events in users.items():
            await store.append(view, [NewEvent(user, e.item, e.action, e.ts) for e in events], now=0.0)
        (read,) = await store.read(other, ["nm0"])
        history, _ = split_recent(users["nm0"], other.recent_len)
        np.testing.assert_allclose(read.tokens.tokens, expected_tokens(torch_model, history, 1.0), atol=1e-5)
        assert await store.recompute_all(other, batch=4) == len(users)
        for user, events in users.items():
            await check_against_batch(store, other, torch_model, user, events, initial_shift=1.0)

    run(with_store(backend, prefix, go))


def test_concurrent_writers_lose_nothing(backend, prefix, engine, torch_model):  # type: ignore[no-untyped-def]
    """20 writers x 10 single-event appends on one user from 5 stores: compare-and-set conflicts
    happen, every event lands once, and the memory equals the batch fold of all of them."""
    writers, per_writer = 20, 10
    ts = {(w, i): 1000 + w * per_writer + i for w in range(writers) for i in range(per_writer)}

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        stores = [store] + [like(store) for _ in range(4)]

        async def writer(w: int) -> None:
            for i in range(per_writer):
                ev = NewEvent("hot", 1 + (w * 7 + i) % 300, 1 + i % 2, ts[w, i], event_id=f"w{w}-{i}")
                (out,) = await stores[w % 5].append(view, [ev], now=time.time())
                assert out.accepted == 1, out

        await asyncio.gather(*(writer(w) for w in range(writers)))
        assert sum(s.counters.conflicts for s in stores) > 0  # the compare-and-set path really ran
        events = sorted(
            (
                Event(ts[w, i], 0, 1 + (w * 7 + i) % 300, 1 + i % 2)
                for w in range(writers)
                for i in range(per_writer)
            ),
            key=lambda e: e.ts,
        )
        events = [e._replace(seq=s) for s, e in enumerate(events)]
        await check_against_batch(store, view, torch_model, "hot", events)

    run(with_store(backend, prefix, go))


def test_a_store_written_for_bucket_tokens_is_refused_not_misread(backend, prefix, engine, tiny_bundle):  # type: ignore[no-untyped-def]
    """Buckets keep only G items per category: a memory model cannot be served from them. The
    store remembers the layout it was written with and refuses the model before any user is read."""
    buckets = load_engine(tiny_bundle, device="cpu", warmup=False)

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, buckets)
        await store.append(view, [NewEvent("b2m", 1 + i, 1, i) for i in range(20)], now=0.0)
        with pytest.raises(BundleError, match="new key prefix and a backfill"):
            await view_on(store, engine)

    run(with_store(backend, prefix, go))


def test_a_lost_history_key_degrades_to_no_history_tokens(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """Someone deleted `hist` and a new model needs a refold: the user is served from the recent
    window alone, not with an error, and the next event's append still works."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        other = replace(view, version="memory-model-03")
        await store.append(view, [NewEvent("lost", 1 + i, 1, i) for i in range(30)], now=0.0)
        await store.redis.delete(store.keys("lost").history)
        (read,) = await store.read(other, ["lost"])
        assert read.tokens is None
        assert len(read.state.recent) == other.recent_len
        (out,) = await store.append(other, [NewEvent("lost", 3, 1, 100)], now=0.0)
        assert (out.accepted, out.error) == (1, None)

    run(with_store(backend, prefix, go))


def test_a_bounded_history_keeps_the_newest_whole_segments(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """With max_history, a refold (here: a late event) keeps only the newest events, whole segments."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        s = view.memory.segment_len  # type: ignore[union-attr]
        await store.append(view, [NewEvent("cap", 1 + i % 300, 1, 100 + i) for i in range(100)], now=0.0)
        await store.append(view, [NewEvent("cap", 5, 1, 1)], now=0.0)  # older than all: refold
        state, tokens, memory = await stored(store, view, "cap")
        history = decode_events(await store.redis.get(store.keys("cap").history))
        assert len(history) == state.history_len <= 40
        assert len(history) % s == (100 + 1 - view.recent_len) % s  # whole segments dropped
        assert tokens is not None
        assert memory is not None

    run(with_store(backend, prefix, go, max_history=40))


def test_in_order_appends_keep_the_history_bounded_and_fold_everything(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """Without any refold (every event newer than the last), the raw history still stops at
    max_history, in whole segments, while the memory goes on folding every event: the same tokens
    as a store without the bound."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        s = view.memory.segment_len  # type: ignore[union-attr]
        unbounded = Store(store.redis, prefix=store.prefix)
        for lo in range(0, 300, 7):
            batch = [(100 + i, 1 + (7 * i) % 300) for i in range(lo, min(lo + 7, 300))]
            for target, user in ((store, "capped"), (unbounded, "whole")):
                await target.append(view, [NewEvent(user, item, 1, ts) for ts, item in batch], now=0.0)
        await unbounded.fold(view, ["whole"])  # the bound is the folding store's setting
        capped, capped_tokens, _ = await stored(store, view, "capped")
        whole, whole_tokens, _ = await stored(store, view, "whole")
        history = decode_events(await store.redis.get(store.keys("capped").history))
        full = decode_events(await store.redis.get(store.keys("whole").history))
        assert len(full) == whole.history_len == 300 - view.recent_len
        assert 40 - s < len(history) == capped.history_len <= 40
        assert len(full) - len(history) == -(-(len(full) - 40) // s) * s  # whole segments dropped
        assert [(e.ts, e.item) for e in history] == [(e.ts, e.item) for e in full[-len(history) :]]
        assert capped_tokens is not None
        assert whole_tokens is not None
        np.testing.assert_array_equal(capped_tokens.tokens, whole_tokens.tokens)

    run(with_store(backend, prefix, go, max_history=40))
