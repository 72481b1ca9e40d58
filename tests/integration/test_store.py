"""The Redis store against real servers (a redis-server of each version in the matrix, and a real
3-master Redis Cluster): incremental == batch, tokens == torch, compare-and-set concurrency,
per-version derived state, bounds. Every test runs on every backend."""

from __future__ import annotations

import asyncio
import itertools
import random
import struct
import time

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.bucketing import Event, UserState, bucketize, split_recent
from model.train import load_model as load_torch_model
from service.runtime import load_engine
from service.store import Store
from service.store_codec import STATE_HEAD_BYTES, Query, State, decode_state, encode_query, encode_state
from service.user_state import NewEvent
from tests.integration.stores import (
    append_in_chunks,
    event_streams,
    like,
    new_events,
    run,
    stored,
    view_on,
    with_store,
)

pytestmark = pytest.mark.integration
_ids = itertools.count()


@pytest.fixture(scope="module")
def engine(tiny_bundle):  # type: ignore[no-untyped-def]
    return load_engine(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def torch_model(tiny_run):  # type: ignore[no-untyped-def]
    return load_torch_model(tiny_run)


async def _commands_processed(store: Store) -> tuple[int, int]:
    """(commands processed over all nodes, number of nodes: each counts the INFO itself once)."""
    if isinstance(store.redis, aioredis.RedisCluster):
        infos = await store.redis.info("commandstats", target_nodes=aioredis.RedisCluster.ALL_NODES)
        calls = [sum(v["calls"] for k, v in i.items() if k.startswith("cmdstat_")) for i in infos.values()]
        return sum(calls), len(infos)
    info = await store.redis.info("commandstats")
    return sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_")), 1


def _expected_tokens(torch_model, buckets) -> np.ndarray:  # type: ignore[no-untyped-def]
    g = torch_model.cfg.bucket_size
    items = torch.zeros(1, max(len(buckets), 1), g, dtype=torch.int64)
    for j, b in enumerate(buckets):
        items[0, j, : len(b.items)] = torch.tensor(b.items)
    cats = torch.tensor([[b.category for b in buckets] or [0]])
    with torch.no_grad():
        return torch_model.history_tokens(items, cats)[0, : len(buckets)].numpy()


def _check_against_batch(view, torch_model, events: list[Event], state, tokens) -> None:  # type: ignore[no-untyped-def]
    """Store ids equal the bundle's ids on a fresh prefix, so the batch rule reads them as they are."""
    history, window = split_recent(events, view.recent_len)
    assert [(e.ts, e.item, e.action) for e in state.recent] == [(e.ts, e.item, e.action) for e in window]
    every = bucketize(history, view.categories_of, num_buckets=10**6, bucket_size=view.bucket_size)
    assert {b.category: list(b.items) for b in every} == {
        c: [i for _, i in reversed(b)] for c, b in state.buckets.items()
    }
    top = every[: view.num_buckets]
    if not top:
        assert tokens is None or state.history_seq == 0
        return
    assert (tokens.version, tokens.history_seq) == (view.version, state.history_seq)
    assert tokens.categories.tolist() == [b.category for b in top]
    assert tokens.newest[:, 0].tolist() == [b.newest[0] for b in top]  # the tokens' timestamps
    np.testing.assert_allclose(tokens.tokens, _expected_tokens(torch_model, top), atol=1e-5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=event_streams, chunk=st.integers(1, 7))
def test_incremental_store_equals_batch_rule_and_torch_tokens(backend, engine, torch_model, stream, chunk):  # type: ignore[no-untyped-def]
    """Random streams with ties and late events, appended in random batches, leave in Redis exactly
    what the batch rule gives for the whole stream, and tokens equal to the PyTorch model's."""
    user = f"prop-{next(_ids)}"

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        events = await append_in_chunks(store, view, user, stream, chunk, time.time())
        if not events:
            return
        state, tokens, _ = await stored(store, view, user)
        assert state.next_seq == len(events)
        _check_against_batch(view, torch_model, events, state, tokens)

    run(with_store(backend, "prop", go))


def test_concurrent_writers_lose_nothing(backend, prefix, engine, torch_model):  # type: ignore[no-untyped-def]
    """50 writers x 20 single-event appends on one user, spread over 5 stores (as 5 worker processes
    would be): compare-and-set conflicts really happen, and 1,000 events land, each exactly once."""
    user = "hot-user"
    writers, per_writer = 50, 20
    ts = {(w, i): 1_000_000 + w * per_writer + i for w in range(writers) for i in range(per_writer)}

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        stores = [store] + [like(store) for _ in range(4)]

        async def writer(w: int) -> None:
            for i in range(per_writer):
                ev = NewEvent(user, 1 + (w * 7 + i) % 300, 1 + i % 2, ts[w, i], event_id=f"w{w}-{i}")
                (out,) = await stores[w % 5].append(view, [ev], now=time.time())
                assert (out.accepted, out.duplicates, out.error) == (1, 0, None)

        await asyncio.gather(*(writer(w) for w in range(writers)))
        assert sum(s.counters.conflicts for s in stores) > 0  # the compare-and-set path really ran
        state, tokens, _ = await stored(store, view, user)
        assert state.next_seq == writers * per_writer
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
        _check_against_batch(view, torch_model, events, state, tokens)
        again = [
            NewEvent(user, 1, 1, ts[w, i], event_id=f"w{w}-{i}")
            for w in range(writers)
            for i in range(per_writer)
        ]
        (out,) = await store.append(view, again, now=time.time())  # replaying every event is a no-op
        assert (out.accepted, out.duplicates) == (0, writers * per_writer)
        assert (await stored(store, view, user))[0].next_seq == writers * per_writer

    run(with_store(backend, prefix, go, max_buckets=None))


def test_concurrent_batches_over_overlapping_users_lose_nothing(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """20 concurrent batches of 30 events over the same 10 users from 5 stores: the users that
    conflict are retried alone, and every event lands exactly once."""
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
        view = await view_on(store, engine)
        stores = [store] + [like(store) for _ in range(4)]
        results = await asyncio.gather(
            *(stores[n % 5].append(view, b, now=0.0) for n, b in enumerate(batches))
        )
        assert sum(o.accepted for r in results for o in r) == 600
        assert sum(s.counters.conflicts for s in stores) > 0
        for user, count in expected.items():
            assert (await stored(store, view, user))[0].next_seq == count

    run(with_store(backend, prefix, go))


def test_duplicate_event_ids_count_once_within_and_across_batches(backend, prefix, engine):  # type: ignore[no-untyped-def]
    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        batch = [
            NewEvent("u1", 5, 1, 100, "a"),
            NewEvent("u1", 6, 1, 101, "a"),
            NewEvent("u1", 7, 1, 102, "b"),
            NewEvent("u1", 8, 1, 103),
        ]
        (first,) = await store.append(view, batch, now=1000.0)
        assert (first.accepted, first.duplicates) == (3, 1)
        (second,) = await store.append(view, [NewEvent("u1", 9, 1, 104, "b")], now=1001.0)
        assert (second.accepted, second.duplicates) == (0, 1)
        # After the retention window the id is accepted again.
        (later,) = await store.append(view, [NewEvent("u1", 9, 1, 104, "b")], now=1000.0 + 86_401)
        assert (later.accepted, later.duplicates) == (1, 0)
        assert [e.item for e in (await stored(store, view, "u1"))[0].recent] == [5, 7, 8, 9]

    run(with_store(backend, prefix, go))


def test_each_model_version_keeps_its_own_tokens(backend, prefix, engine, torch_model):  # type: ignore[no-untyped-def]
    """Two versions reading the same user (a rolling update) each build their tokens once, in their
    own key: neither overwrites the other, and later reads of either rebuild nothing."""
    from dataclasses import replace

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        other = replace(view, version="another-model00")
        events = new_events(view, "u2", [(10 * i, 1 + i * 13 % 300, 1) for i in range(40)])
        await store.append(view, events, now=0.0)
        assert store.counters.token_builds == 0  # the append built the served version's tokens
        for _ in range(3):
            for v in (view, other, view, other):
                (read,) = await store.read(v, ["u2"])
                assert read.tokens is not None
                assert read.tokens.version == v.version
        assert store.counters.token_builds == 1  # the other version's first read, and nothing after
        _, mine, _ = await stored(store, view, "u2")
        _, theirs, _ = await stored(store, other, "u2")
        np.testing.assert_array_equal(mine.tokens, theirs.tokens)  # same weights here, separate keys
        history, _ = split_recent([Event(e.ts, s, e.item, e.action) for s, e in enumerate(events)], 8)
        top = bucketize(history, view.categories_of, view.num_buckets, view.bucket_size)
        np.testing.assert_allclose(mine.tokens, _expected_tokens(torch_model, top), atol=1e-5)
        ttl = await store.redis.ttl(store.keys("u2").tokens(other.version))
        assert 0 < ttl <= store.derived_ttl_s  # a retired version's tokens expire by themselves

    run(with_store(backend, prefix, go))


def test_a_fresh_read_is_one_round_trip_of_four_gets(backend, prefix, engine):  # type: ignore[no-untyped-def]
    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        users = [f"r{i}" for i in range(5)]
        await store.append(
            view,
            [e for u in users for e in new_events(view, u, [(50 + j, 3, 1) for j in range(12)])],
            now=0.0,
        )
        await store.fold(view, users)
        before, nodes = await _commands_processed(store)
        reads = await store.read(view, [*users, "nobody"])
        after, _ = await _commands_processed(store)
        assert after - before == 4 * 6 + nodes  # state, tokens, query, log per user (+ INFO): no rebuild
        assert [len(r.state.recent) for r in reads[:5]] == [8] * 5
        assert (reads[5].state, reads[5].tokens, reads[5].error) == (None, None, None)

    run(with_store(backend, prefix, go))


def test_an_append_only_logs_until_the_log_is_full_and_a_read_sees_every_logged_event(  # type: ignore[no-untyped-def]
    backend, prefix, engine
):
    """Below ``fold_after`` events an append writes only the user's log (no state is read or
    written); the append that fills it folds it; a read folds whatever is logged (from what its own
    round trip read), so it always sees every acknowledged event, and its fold is written with the
    values derived from it, in one round trip."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        k = store.keys("lg")
        stream = [(100 + j, 1 + j, 1) for j in range(30)]
        await store.append(view, new_events(view, "lg", stream[:5]), now=0.0)
        assert not await store.redis.exists(k.state)
        assert await store.redis.strlen(k.log) == 1 + 5 * 10
        gets, execs = await _calls(store, "get"), await _calls(store, "exec")
        (read,) = await store.read(view, ["lg"])
        assert [e.ts for e in read.state.recent] == [100, 101, 102, 103, 104]
        assert (await _calls(store, "get") - gets, await _calls(store, "exec") - execs) == (4, 0)
        query = Query(view.version, read.state.next_seq, np.ones(view.d_model, np.float32))
        await store.write_derived(view, [(read, query)], reads=[read])
        assert not await store.redis.exists(k.log)
        (again,) = await store.read(view, ["lg"])
        assert again.state == read.state
        assert again.query is not None  # written with the fold it was computed from
        await store.append(view, new_events(view, "lg", stream[5:7]), now=0.0)  # 2 logged
        await store.append(view, new_events(view, "lg", stream[7:21]), now=0.0)  # 16: folded
        assert not await store.redis.exists(k.log)
        state = decode_state(await store.redis.get(k.state))
        assert state.next_seq == 21
        assert [e.ts for e in state.recent] == [100 + j for j in range(13, 21)]

    run(with_store(backend, prefix, go, fold_after=16))


def test_a_user_read_twice_in_one_batch_is_folded_once(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """Two requests for one user in the same micro-batch share the read's fold: it is written once,
    not once per request (the second script would only meet its own first write)."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        await store.append(view, new_events(view, "tw", [(100 + j, 1 + j, 1) for j in range(3)]), now=0.0)
        first, second = await store.read(view, ["tw", "tw"])
        assert first.fold is not None
        assert first.fold is second.fold
        scripts = await _calls(store, "eval")
        await store.write_derived(view, reads=[first, second])
        assert await _calls(store, "eval") - scripts == 1
        assert store.counters.conflicts == 0
        assert not await store.redis.exists(store.keys("tw").log)

    run(with_store(backend, prefix, go, fold_after=16))


def test_background_folds_never_hide_an_event_and_a_busy_store_defers_them(  # type: ignore[no-untyped-def]
    backend, prefix, engine
):
    """The service's store answers an append before the fold it starts; a read right after it
    still sees every event. With its background folds all busy, a full log is left for later
    (counted), and a read folds it."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        stream = [(100 + j, 1 + j, 1) for j in range(40)]
        await store.append(view, new_events(view, "bg", stream[:20]), now=0.0)
        (read,) = await store.read(view, ["bg"])
        assert read.state.next_seq == 20
        await store.settle()
        assert not await store.redis.exists(store.keys("bg").log)
        store.max_background_folds = 0
        await store.append(view, new_events(view, "bg", stream[20:]), now=0.0)
        assert store.counters.folds_deferred == 1
        assert await store.redis.strlen(store.keys("bg").log) == 1 + 20 * 10
        (read,) = await store.read(view, ["bg"])
        assert [e.ts for e in read.state.recent] == [100 + j for j in range(32, 40)]

    run(with_store(backend, prefix, go, fold_in_background=True))


async def _calls(store: Store, command: str) -> int:
    """Calls of one command over all nodes so far."""
    if isinstance(store.redis, aioredis.RedisCluster):
        infos = await store.redis.info("commandstats", target_nodes=aioredis.RedisCluster.ALL_NODES)
        return sum(i.get(f"cmdstat_{command}", {}).get("calls", 0) for i in infos.values())
    info = await store.redis.info("commandstats")
    return int(info.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_an_append_round_is_one_transaction_on_a_single_node(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """The scripts of one append round (up to ``append_chunk`` users) run in one MULTI/EXEC on a single
    node, so Redis fsyncs its AOF once for them; a cluster runs them one by one. Outcomes stay per
    user either way."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        execs = await _calls(store, "exec")
        outcomes = await store.append(
            view, [e for i in range(10) for e in new_events(view, f"t{i}", [(60 + i, 3, 1)] * 3)], now=0.0
        )
        single = not isinstance(store.redis, aioredis.RedisCluster)
        assert await _calls(store, "exec") - execs == (1 if single else 0)
        assert [(o.accepted, o.error) for o in outcomes] == [(3, None)] * 10

    run(with_store(backend, prefix, go))


def test_a_stored_answer_is_served_for_its_shape_until_an_event_or_another_model(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """An answer is returned only for the request shape it was stored under, by the model version
    that rendered it, at the state's current sequence number; a lookup is one round trip of two
    small commands per user. An append deletes the user's answers, and an answer rendered from the
    state before an append (a reader racing the writer) is never served."""
    from dataclasses import replace

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        other = replace(view, version="another-model00")
        await store.append(view, new_events(view, "a", [(i, 1 + i, 1) for i in range(20)]), now=0.0)
        assert await store.answers(view, ["a", "nobody"], ["20:1:", "20:1:"]) == [None, None]
        (read,) = await store.read(view, ["a"])
        await store.write_derived(view, answers=[(read, "20:1:", b'{"answer": 1}')])
        before, nodes = await _commands_processed(store)
        found = await store.answers(view, ["a", "a", "nobody"], ["20:1:", "5:1:title", "20:1:"])
        after, _ = await _commands_processed(store)
        assert (found, after - before) == ([b'{"answer": 1}', None, None], 2 * 3 + nodes)
        assert await store.answers(other, ["a"], ["20:1:"]) == [None]
        assert 0 < await store.redis.ttl(store.keys("a").answers(view.version)) <= 60

        await store.append(view, new_events(view, "a", [(30, 5, 1)]), now=0.0)
        assert not await store.redis.exists(store.keys("a").answers(view.version))
        await store.write_derived(view, answers=[(read, "20:1:", b'{"answer": 1}')])  # late: seq 20
        assert await store.answers(view, ["a"], ["20:1:"]) == [None]  # the state is at seq 21

        await store.redis.hset(store.keys("a").answers(view.version), "20:1:", b"\x02broken")
        assert await store.answers(view, ["a"], ["20:1:"]) == [None]
        assert store.counters.repairs == {"answer": 1}

    run(with_store(backend, prefix, go, answers_ttl_s=60))


def test_without_an_answer_ttl_no_answer_is_read_or_kept(backend, prefix, engine):  # type: ignore[no-untyped-def]
    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        await store.append(view, new_events(view, "n", [(i, 1 + i, 1) for i in range(20)]), now=0.0)
        (read,) = await store.read(view, ["n"])
        await store.write_derived(view, answers=[(read, "20:1:", b"{}")])
        assert not await store.redis.exists(store.keys("n").answers(view.version))
        before, nodes = await _commands_processed(store)
        assert await store.answers(view, ["n"], ["20:1:"]) == [None]
        after, _ = await _commands_processed(store)
        assert after - before == nodes  # nothing asked

    run(with_store(backend, prefix, go))


def test_cached_query_is_served_until_an_event_moves_the_user(backend, prefix, engine):  # type: ignore[no-untyped-def]
    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        await store.append(view, new_events(view, "q", [(i, 1 + i, 1) for i in range(20)]), now=0.0)
        (read,) = await store.read(view, ["q"])
        assert read.query is None
        await store.write_derived(
            view, [(read, Query(view.version, read.state.next_seq, np.ones(view.d_model, np.float32)))]
        )
        (read,) = await store.read(view, ["q"])
        assert read.query is not None
        np.testing.assert_array_equal(read.query.vector, np.ones(view.d_model))
        await store.append(view, new_events(view, "q", [(30, 5, 1)]), now=0.0)
        (read,) = await store.read(view, ["q"])
        assert read.query is None  # stale: computed at the previous sequence number
        # A write computed from an older state is refused by the store (its state moved).
        stale = Query(view.version, read.state.next_seq - 1, np.ones(view.d_model, np.float32))
        old = type(read)(read.user_id, read.keys, read.state, head=b"\x02" + bytes(21))
        await store.write_derived(view, [(old, stale)])
        assert await store.redis.get(read.keys.query(view.version)) == encode_query(
            Query(view.version, 20, np.ones(view.d_model, np.float32))
        )

    run(with_store(backend, prefix, go))


def test_bulk_recompute_builds_a_new_version_before_it_serves(backend, prefix, engine):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        new_model = replace(view, version="bulk-version-00")
        await store.append(
            view,
            [
                e
                for u in range(30)
                for e in new_events(
                    view, f"bulk{u}", [(100 * i, 1 + (u * 31 + i * 7) % 300, 1) for i in range(20)]
                )
            ],
            now=0.0,
        )
        assert await store.recompute_all(new_model, batch=7) == 30
        for u in range(30):
            assert (await stored(store, new_model, f"bulk{u}"))[1].version == "bulk-version-00"
        builds = store.counters.token_builds
        await store.read(new_model, [f"bulk{u}" for u in range(30)])
        assert store.counters.token_builds == builds  # fresh tokens: no rebuild on read

    run(with_store(backend, prefix, go))


def test_reads_during_writes_never_see_a_torn_state(backend, prefix, engine, torch_model):  # type: ignore[no-untyped-def]
    """Readers racing writers: every read's tokens belong to the same state as its recent window
    (the prefix of the stream that ends at the window's newest event), never a mix. Then the torn
    state made on purpose: older tokens stamped with an older history seq next to a newer state."""
    n_events = 80
    stream = [(1000 + i, 1 + (i * 37) % 300, 1 + i % 2) for i in range(n_events)]
    expected: dict[int, tuple[list[int], np.ndarray | None]] = {}

    def expected_for(m: int, view) -> tuple[list[int], np.ndarray | None]:  # type: ignore[no-untyped-def]
        if m not in expected:
            events = [Event(ts, s, i, a) for s, (ts, i, a) in enumerate(stream[: m + 1])]
            history, _ = split_recent(events, view.recent_len)
            top = bucketize(history, view.categories_of, view.num_buckets, view.bucket_size)
            expected[m] = ([b.category for b in top], _expected_tokens(torch_model, top) if top else None)
        return expected[m]

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        done = asyncio.Event()
        checked = torn = 0
        old_tokens = b""

        async def writer() -> None:
            nonlocal old_tokens
            writers = [store] + [like(store) for _ in range(4)]
            for i, e in enumerate(new_events(view, "torn", stream)):
                await writers[i % 5].append(view, [e], 0.0)
                await asyncio.sleep(0.002)  # an append is one script: let the readers (folding) race it
                if i == n_events // 2:
                    old_tokens = await store.redis.get(store.keys("torn").tokens(view.version))
            done.set()

        async def reader(r: Store, once: bool = False) -> None:
            nonlocal checked, torn
            for _ in range(10_000):  # bounded; ends when the writer is done
                if done.is_set() and not once:
                    return
                (read,) = await r.read(view, ["torn"])
                if read.state is None:
                    continue
                cats, tokens = expected_for(read.state.recent[-1].ts - 1000, view)
                if tokens is None:
                    torn += read.tokens is not None
                else:
                    ok = read.tokens is not None and read.tokens.categories.tolist() == cats
                    torn += not (ok and np.allclose(read.tokens.tokens, tokens, atol=1e-5))
                checked += 1
                if once:
                    return

        await asyncio.gather(writer(), *(reader(like(store)) for _ in range(4)))
        assert old_tokens
        await store.redis.set(store.keys("torn").tokens(view.version), old_tokens)
        await reader(store, once=True)
        assert checked > 50  # the readers really raced the writer
        assert torn == 0, f"{torn} of {checked} reads mixed two states"

    run(with_store(backend, prefix, go))


def test_bounded_store_keeps_the_most_recent_categories_and_expires_idle_users(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """max_buckets keeps the most recently active categories (the rule's own bound, so the store
    equals UserState with the same bound); user_ttl_s makes an idle user's keys expire."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        stream = [(i, 1 + (i * 53) % 300, 1) for i in range(400)]
        events = await append_in_chunks(store, view, "b", stream, 37, 0.0)
        state, _, _ = await stored(store, view, "b")
        rule = UserState(view.recent_len, view.bucket_size, max_buckets=3, order=view.category_order)
        for e in events:
            rule.append(e, view.categories_of)
        assert len(state.buckets) == 3
        assert {c: [i for _, i in b] for c, b in state.buckets.items()} == {
            c: [i for _, i in b] for c, b in rule.buckets.items()
        }
        for key in (store.keys("b").state, store.keys("b").tokens(view.version)):
            assert 0 < await store.redis.ttl(key) <= 3600

    run(with_store(backend, prefix, go, max_buckets=3, user_ttl_s=3600))


def test_a_state_of_another_layout_fails_only_its_user(backend, prefix, engine):  # type: ignore[no-untyped-def]
    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        await store.append(
            view, new_events(view, "ok", [(1, 2, 1)]) + new_events(view, "odd", [(1, 2, 1)]), now=0.0
        )
        await store.fold(view, ["ok", "odd"])
        blob = bytearray(await store.redis.get(store.keys("odd").state))
        blob[2] = 99  # L = 99: written for another model
        await store.redis.set(store.keys("odd").state, bytes(blob))
        ok, odd = await store.read(view, ["ok", "odd"])
        assert ok.error is None
        assert ok.state is not None
        assert "L=99" in str(odd.error)
        outcomes = await store.append(
            view, new_events(view, "ok", [(2, 3, 1)]) + new_events(view, "odd", [(2, 3, 1)]), now=0.0
        )
        assert [(o.user_id, o.accepted, o.error is None) for o in outcomes] == [
            ("ok", 1, True),
            ("odd", 0, False),
        ]
        assert decode_state(await store.redis.get(store.keys("odd").state)).recent_len == 99  # untouched

    run(with_store(backend, prefix, go))


def _format_2(s: State) -> bytes:
    """A state as the previous release wrote it (fixed-width records), for the upgrade test: the
    same header with format byte 2, then 14-byte events and per bucket <I I H> + 8-byte entries."""
    out = b"\x02" + encode_state(s)[1:STATE_HEAD_BYTES]
    out += b"".join(struct.pack("<IIIH", *e) for e in s.recent)
    for cat, entries in s.buckets.items():
        out += struct.pack("<IIH", cat, entries[-1][0][1], len(entries))
        out += b"".join(struct.pack("<II", ts, item) for (ts, _), item in entries)
    return out


def test_a_state_written_by_the_previous_format_is_read_and_upgraded(backend, prefix, engine):  # type: ignore[no-untyped-def]
    """A store written before format 3 keeps its users: a format-2 state reads as it was, and the
    user's next event, once folded, writes it back as format 3, exactly as if it had always been
    format 3."""

    async def go(store: Store):  # type: ignore[no-untyped-def]
        view = await view_on(store, engine)
        n_items = len(engine.bundle.catalog.items)
        stream = [(100 + 7 * t, 1 + (5 * t) % n_items, 1) for t in range(3 * view.recent_len)]
        for user in ("old", "new"):
            await store.append(view, new_events(view, user, stream), now=0.0)
        current = decode_state(await store.redis.get(store.keys("old").state))
        assert current.buckets, "the stream must reach the history"
        await store.redis.set(store.keys("old").state, _format_2(current))
        (old,) = await store.read(view, ["old"])
        assert old.state == current
        last = [(10_000, 2, 1)]
        for user in ("old", "new"):
            await store.append(view, new_events(view, user, last), now=0.0)
        await store.fold(view, ["old", "new"])
        old_blob = await store.redis.get(store.keys("old").state)
        new_blob = await store.redis.get(store.keys("new").state)
        assert old_blob[0] == 3
        assert old_blob == new_blob

    run(with_store(backend, prefix, go))
