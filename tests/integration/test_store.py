"""The Redis store against a real redis-server and a real 3-master Redis Cluster: incremental ==
batch, tokens == torch, concurrency. Every test runs on both."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.bucketing import Event, bucketize, split_recent
from model.train import load_model as load_torch_model
from service.runtime import LoadedModel, load_model
from service.store import NewEvent, Store
from service.store_codec import decode_bucket, decode_recent, decode_tokens
from tests.integration.stores import append_in_chunks, event_streams, like, processes, run, with_store

pytestmark = pytest.mark.integration
_ids = itertools.count()


@pytest.fixture(scope="module")
def loaded(tiny_bundle) -> LoadedModel:  # type: ignore[no-untyped-def]
    return load_model(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def torch_model(tiny_run):  # type: ignore[no-untyped-def]
    return load_torch_model(tiny_run)


async def _commands_processed(store: Store) -> tuple[int, int]:
    """(commands processed over all nodes, number of nodes: each counts the INFO itself once)."""
    if isinstance(store.redis, aioredis.RedisCluster):
        infos = await store.redis.info("stats", target_nodes=aioredis.RedisCluster.ALL_NODES)
        return sum(i["total_commands_processed"] for i in infos.values()), len(infos)
    return (await store.redis.info("stats"))["total_commands_processed"], 1


async def _raw_state(store: Store, user: str) -> tuple:  # type: ignore[type-arg]
    k = store.keys(user)
    recent = decode_recent(await store.redis.get(k.recent))
    buckets = {int(c): decode_bucket(b) for c, b in (await store.redis.hgetall(k.buckets)).items()}
    tok = await store.redis.get(k.tokens)
    return recent, buckets, decode_tokens(tok) if tok else None


def _expected_tokens(torch_model, buckets) -> np.ndarray:  # type: ignore[no-untyped-def]
    g = torch_model.cfg.bucket_size
    items = torch.zeros(1, max(len(buckets), 1), g, dtype=torch.int64)
    for j, b in enumerate(buckets):
        items[0, j, : len(b.items)] = torch.tensor(b.items)
    cats = torch.tensor([[b.category for b in buckets] or [0]])
    with torch.no_grad():
        return torch_model.history_tokens(items, cats)[0, : len(buckets)].numpy()


def _check_against_batch(loaded, torch_model, events: list[Event], recent, buckets, tokens) -> None:  # type: ignore[no-untyped-def]
    v = loaded.view
    history, window = split_recent(events, v.recent_len)
    assert [(e.ts, e.item, e.action) for e in recent.events] == [(e.ts, e.item, e.action) for e in window]
    every = bucketize(history, v.categories_of, num_buckets=10**6, bucket_size=v.bucket_size)
    assert {b.category: list(b.items) for b in every} == {
        c: [i for _, i in reversed(b)] for c, b in buckets.items()
    }
    top = every[: v.num_buckets]
    if not top:
        assert tokens is None
        return
    assert tokens.version == loaded.version
    assert tokens.history_seq == recent.history_seq
    assert tokens.categories.tolist() == [b.category for b in top]
    np.testing.assert_allclose(tokens.tokens, _expected_tokens(torch_model, top), atol=1e-5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=event_streams, chunk=st.integers(1, 7))
def test_incremental_store_equals_batch_rule_and_torch_tokens(backend, loaded, torch_model, stream, chunk):  # type: ignore[no-untyped-def]
    user = f"prop-{next(_ids)}"

    async def go(store: Store):  # type: ignore[no-untyped-def]
        events = await append_in_chunks(store, loaded.view, user, stream, chunk, time.time())
        if not events:
            return
        recent, buckets, tokens = await _raw_state(store, user)
        assert recent.next_seq == len(events)
        _check_against_batch(loaded, torch_model, events, recent, buckets, tokens)

    run(with_store(backend, "prop", go))


def test_concurrent_writers_lose_nothing(backend, prefix, loaded, torch_model):  # type: ignore[no-untyped-def]
    """50 writers x 20 single-event appends on one user, spread over 5 "processes" (stores with their
    own write lock) so that WATCH conflicts really happen: 1,000 events, each exactly once."""
    user = "hot-user"
    writers, per_writer = 50, 20
    ts = {(w, i): 1_000_000 + w * per_writer + i for w in range(writers) for i in range(per_writer)}

    async def writer(store: Store, w: int) -> None:
        store = processes(store)[w % 5]
        for i in range(per_writer):
            ev = NewEvent(user, 1 + (w * 7 + i) % 300, 1 + i % 2, ts[w, i], event_id=f"w{w}-{i}")
            result = await store.append(loaded.view, [ev], now=time.time())
            assert (result.accepted, result.duplicates) == (1, 0)

    async def go(store: Store):  # type: ignore[no-untyped-def]
        await asyncio.gather(*(writer(store, w) for w in range(writers)))
        assert sum(s.conflicts for s in processes(store)) > 0  # the WATCH path really ran
        recent, buckets, tokens = await _raw_state(store, user)
        assert recent.next_seq == writers * per_writer
        assert await store.redis.zcard(store.keys(user).dedup) == writers * per_writer
        # Distinct timestamps: the final state depends only on the set of events, not commit order.
        events = sorted(
            (
                Event(ts[w, i], 0, 1 + (w * 7 + i) % 300, 1 + i % 2)
                for w in range(writers)
                for i in range(per_writer)
            ),
            key=lambda e: e.ts,
        )
        events = [e._replace(seq=s) for s, e in enumerate(events)]
        _check_against_batch(loaded, torch_model, events, recent, buckets, tokens)
        # Replaying every event is a no-op.
        again = [
            NewEvent(user, 1, 1, ts[w, i], event_id=f"w{w}-{i}")
            for w in range(writers)
            for i in range(per_writer)
        ]
        result = await store.append(loaded.view, again, now=time.time())
        assert (result.accepted, result.duplicates) == (0, writers * per_writer)
        assert (await _raw_state(store, user))[0].next_seq == writers * per_writer

    run(with_store(backend, prefix, go))


def test_duplicate_event_ids_count_once_within_and_across_batches(backend, prefix, loaded):  # type: ignore[no-untyped-def]
    async def go(store: Store):  # type: ignore[no-untyped-def]
        batch = [
            NewEvent("u1", 5, 1, 100, "a"),
            NewEvent("u1", 6, 1, 101, "a"),
            NewEvent("u1", 7, 1, 102, "b"),
            NewEvent("u1", 8, 1, 103),
        ]
        first = await store.append(loaded.view, batch, now=1000.0)
        assert (first.accepted, first.duplicates) == (3, 1)
        second = await store.append(loaded.view, [NewEvent("u1", 9, 1, 104, "b")], now=1001.0)
        assert (second.accepted, second.duplicates) == (0, 1)
        # After the retention window the id is accepted again.
        later = await store.append(loaded.view, [NewEvent("u1", 9, 1, 104, "b")], now=1000.0 + 86_401)
        assert (later.accepted, later.duplicates) == (1, 0)
        recent = decode_recent(await store.redis.get(store.keys("u1").recent))
        assert [e.item for e in recent.events] == [5, 7, 8, 9]

    run(with_store(backend, prefix, go))


def test_tokens_of_another_model_version_are_never_served(backend, prefix, loaded, torch_model):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    events = [NewEvent("u2", 1 + i * 13 % 300, 1, 10 * i) for i in range(40)]

    async def go(store: Store):  # type: ignore[no-untyped-def]
        await store.append(loaded.view, events, now=0.0)
        other = replace(loaded.view, version="another-model00")
        snap = (await store.read(other, ["u2"], now=0.0))[0]
        assert snap.tokens is not None
        assert snap.tokens.version == "another-model00"  # rebuilt, not the stored ones
        _, _, stored = await _raw_state(store, "u2")
        assert stored.version == "another-model00"  # and written back for the next read
        # Reading with the original version rebuilds again, equal to the from-scratch tokens.
        snap = (await store.read(loaded.view, ["u2"], now=0.0))[0]
        history, _ = split_recent([Event(e.ts, s, e.item, e.action) for s, e in enumerate(events)], 8)
        top = bucketize(history, loaded.view.categories_of, loaded.view.num_buckets, loaded.view.bucket_size)
        np.testing.assert_allclose(snap.tokens.tokens, _expected_tokens(torch_model, top), atol=1e-5)

    run(with_store(backend, prefix, go))


def test_read_is_one_pipeline_for_a_batch_and_unknown_users_are_empty(backend, prefix, loaded):  # type: ignore[no-untyped-def]
    async def go(store: Store):  # type: ignore[no-untyped-def]
        await store.append(
            loaded.view, [NewEvent(f"r{i}", 3, 1, 50 + j) for i in range(5) for j in range(12)], now=0.0
        )
        before, nodes = await _commands_processed(store)
        snaps = await store.read(loaded.view, [f"r{i}" for i in range(5)] + ["nobody"], now=0.0)
        after, _ = await _commands_processed(store)
        assert after - before == 2 * 6 + nodes  # two GETs per user (+ the INFO itself): no repair
        assert [len(s.recent.events) for s in snaps[:5]] == [8] * 5
        assert snaps[5].recent is None
        assert snaps[5].tokens is None

    run(with_store(backend, prefix, go))


def test_bulk_recompute_moves_every_user_to_the_new_model(backend, prefix, loaded):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    events = [
        NewEvent(f"bulk{u}", 1 + (u * 31 + i * 7) % 300, 1, 100 * i) for u in range(30) for i in range(20)
    ]
    new_model = replace(loaded.view, version="bulk-version-00")

    async def go(store: Store):  # type: ignore[no-untyped-def]
        await store.append(loaded.view, events, now=0.0)
        assert await store.recompute_all(new_model, now=0.0, batch=7) == 30
        for u in range(30):
            _, _, tokens = await _raw_state(store, f"bulk{u}")
            assert tokens.version == "bulk-version-00"
        before, nodes = await _commands_processed(store)
        await store.read(new_model, [f"bulk{u}" for u in range(30)], now=0.0)
        after, _ = await _commands_processed(store)
        assert after - before == 2 * 30 + nodes  # fresh tokens: no rebuild on read

    run(with_store(backend, prefix, go))


def test_concurrent_batches_over_overlapping_users_lose_nothing(backend, prefix, loaded):  # type: ignore[no-untyped-def]
    """20 concurrent batches of 30 events over the same 10 users from 5 "processes": batches conflict,
    fall back to per-user transactions, and every event lands exactly once."""
    import random

    rng = random.Random(0)
    batches = [
        [NewEvent(f"o{rng.randrange(10)}", 1 + rng.randrange(300), 1, 1000 + b * 30 + i) for i in range(30)]
        for b in range(20)
    ]
    expected: dict[str, int] = {}
    for batch in batches:
        for e in batch:
            expected[e.user_id] = expected.get(e.user_id, 0) + 1

    async def go(store: Store):  # type: ignore[no-untyped-def]
        stores = processes(store)
        results = await asyncio.gather(
            *(stores[n % 5].append(loaded.view, b, now=0.0) for n, b in enumerate(batches))
        )
        assert sum(r.accepted for r in results) == 600
        assert sum(s.conflicts for s in stores) > 0  # the WATCH path really ran
        for user, count in expected.items():
            recent, _, _ = await _raw_state(store, user)
            assert recent.next_seq == count

    run(with_store(backend, prefix, go))


def test_repair_of_already_fresh_tokens_hands_them_back(backend, prefix, loaded):  # type: ignore[no-untyped-def]
    """A reader saw stale tokens, but a writer refreshed them before its repair ran: the repair must
    return those tokens, not drop the user's history for the request."""
    events = [NewEvent("fresh", 1 + i * 17 % 300, 1, 10 * i) for i in range(30)]

    async def go(store: Store):  # type: ignore[no-untyped-def]
        await store.append(loaded.view, events, now=0.0)
        repaired = await store._transact(loaded.view, {store.keys("fresh"): []}, now=0.0)
        assert repaired[0].new_tokens is not None
        _, _, stored = await _raw_state(store, "fresh")
        np.testing.assert_array_equal(repaired[0].new_tokens.tokens, stored.tokens)

    run(with_store(backend, prefix, go))


def test_reads_during_writes_never_see_a_torn_state(backend, prefix, loaded, torch_model):  # type: ignore[no-untyped-def]
    """Readers racing one writer: every snapshot's tokens belong to the same state as its recent
    window (the prefix of the stream that ends at the window's newest event), never a mix. On one
    Redis node the two GETs of a read rarely interleave with a write, so the race is followed by
    the torn state made on purpose: older tokens next to a newer window."""
    n_events = 80
    stream = [Event(1000 + i, i, 1 + (i * 37) % 300, 1 + i % 2) for i in range(n_events)]
    expected: dict[int, tuple[list[int], np.ndarray | None]] = {}

    def expected_for(m: int) -> tuple[list[int], np.ndarray | None]:
        if m not in expected:
            history, _ = split_recent(stream[: m + 1], loaded.view.recent_len)
            top = bucketize(
                history, loaded.view.categories_of, loaded.view.num_buckets, loaded.view.bucket_size
            )
            cats = [b.category for b in top]
            expected[m] = (cats, _expected_tokens(torch_model, top) if top else None)
        return expected[m]

    async def go(store: Store):  # type: ignore[no-untyped-def]
        done = asyncio.Event()
        checked = torn = 0

        old_tokens = b""

        async def writer() -> None:
            nonlocal old_tokens
            writers = processes(store)
            for i, e in enumerate(stream):  # single events from rotating "processes"
                await writers[i % 5].append(loaded.view, [NewEvent("torn", e.item, e.action, e.ts)], 0.0)
                if i == n_events // 2:
                    old_tokens = await store.redis.get(store.keys("torn").tokens)
            done.set()

        async def reader(r: Store, once: bool = False) -> None:
            nonlocal checked, torn
            for _ in range(10_000):  # bounded; ends when the writer is done
                if done.is_set() and not once:
                    return
                snap = (await r.read(loaded.view, ["torn"], now=0.0))[0]
                if snap.recent is None:
                    continue
                m = snap.recent.events[-1].ts - 1000
                cats, tokens = expected_for(m)
                if tokens is None:
                    torn += snap.tokens is not None
                else:
                    ok = snap.tokens is not None and snap.tokens.categories.tolist() == cats
                    torn += not (ok and np.allclose(snap.tokens.tokens, tokens, atol=1e-5))
                checked += 1
                if once:
                    return

        await asyncio.gather(writer(), *(reader(like(store)) for _ in range(4)))
        assert old_tokens
        await store.redis.set(store.keys("torn").tokens, old_tokens)
        await reader(store, once=True)
        assert checked > 50  # the readers really raced the writer
        assert torn == 0, f"{torn} of {checked} snapshots mixed two states"

    run(with_store(backend, prefix, go))
