"""Redis I/O of the user-state store: what is read and written, in how many round trips, and what a
concurrent writer or a broken value does. The rules live in service.user_state (pure, tested by
properties); this module only reads, calls them off the event loop, and writes.

Answers (the first stage of a /recommend batch): one pipeline asks for each user's stored answer
of the request's shape and the state's header; a fresh answer ends that request. Read (the users
without one): one pipeline GETs the state, history tokens and query state for the served model
version. Fresh derived state is used as is; stale or missing tokens are rebuilt from the state and
written back (only if the state did not move meanwhile).

Append (an /events batch): one pipeline reads the users' states and tokens and the dedup scores of
events that carry ids; the new states and tokens are computed off the loop (stored buckets no event
touched are neither decoded nor re-encoded: store_codec.PackedBucket); one MULTI/EXEC (a plain
pipeline on a cluster) runs the append script once per user, which writes only if the user's state
header (which holds its sequence number) is still the one read: a compare-and-set. Users whose state
moved meanwhile are recomputed and retried; the others are done. So an append is two round trips per
chunk of ``append_chunk`` users, atomic per user, and never holds a lock across processes or
requests. Chunks bound how long one batch's decoding and command packing hold the event loop (a
1,000-user batch otherwise stalls /healthz for ~100 ms); two are in flight at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from service import memory_store
from service.errors import BundleError, StoreConflict, StoreUnavailable, UserStateCorrupt
from service.keyed_locks import KeyedLocks
from service.redis_scripts import APPEND, SET_DERIVED
from service.store_codec import (
    EVENT,
    SCHEMA,
    STATE_HEAD_BYTES,
    CorruptValue,
    MemoryRecord,
    Query,
    State,
    Tokens,
    UserKeys,
    decode_answer,
    decode_events,
    decode_memory,
    decode_query,
    decode_state,
    decode_tokens,
    encode_answer,
    encode_events,
    encode_memory,
    encode_query,
    encode_state,
    encode_tokens,
    keys_from_state,
    meta_key,
    state_head,
    state_next_seq,
    user_keys,
)
from service.store_types import Counters, Inspected, UserOutcome, UserRead
from service.user_state import (
    Appended,
    LayoutMismatch,
    ModelView,
    NewEvent,
    TokenJob,
    apply_events,
    build_tokens,
    check_layout,
    fresh,
    token_job,
)

T = TypeVar("T")


@dataclass
class _Pending:
    """One user's append in flight."""

    keys: UserKeys
    events: list[NewEvent]
    head: bytes = b""
    result: Appended | None = None
    tokens: Tokens | None = None
    memory: MemoryRecord | None = None
    history_op: bytes = b""


class Store:
    append_chunk = 32  # users per append round trip
    # Chunks of one batch in flight at once: two let one chunk's computation (a worker thread)
    # overlap the other's Redis round trips; more would queue every chunk's decoding on the event
    # loop at once and stall other requests (/healthz) behind them.
    append_lanes = 2

    def __init__(
        self,
        redis: Redis,
        prefix: str = "causerec",
        dedup_retention_s: int = 86_400,
        derived_ttl_s: int = 7 * 86_400,
        answers_ttl_s: int = 0,
        user_ttl_s: int = 0,
        max_buckets: int | None = None,
        max_history: int | None = None,
        max_retries: int = 50,
        timeout_s: float = 30.0,
    ) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.dedup_retention_s = dedup_retention_s
        self.user_ttl_s = user_ttl_s  # 0: a user's state never expires
        # Derived values never outlive the state: a user forgotten and back again starts at seq 0,
        # and must not meet tokens stamped with the seqs of the previous life.
        self.derived_ttl_s = min(derived_ttl_s, user_ttl_s) if user_ttl_s else derived_ttl_s
        self.answers_ttl_s = min(answers_ttl_s, self.derived_ttl_s) if answers_ttl_s else 0  # 0: none kept
        self.max_buckets = max_buckets  # categories kept per user (None: all)
        self.max_history = max_history  # memory compressor: raw history events kept (None: all)
        self.max_retries = max_retries
        self.counters = Counters()
        # Appends to one user from this process wait for each other here instead of wasting
        # compare-and-set round trips on Redis; other processes and replicas are kept apart by
        # the compare-and-set itself.
        self._users = KeyedLocks()

    def keys(self, user_id: str) -> UserKeys:
        return user_keys(self.prefix, user_id)

    def _writes(self) -> Any:
        """A pipeline for one round trip of compare-and-set scripts. On a single node it is a
        MULTI/EXEC: under ``appendfsync always`` Redis fsyncs its AOF once per event-loop pass, and
        it reads a large pipeline in 16 KB passes, so a plain pipeline of a round's appends (~7 KB
        each) costs an fsync per 16 KB where EXEC costs one (docs/PERFORMANCE.md, bench-events).
        The scripts' outcomes stay per user: each still checks its own user's head. A cluster
        cannot run one transaction across slots, so there each script is its own."""
        return self.redis.pipeline(transaction=not isinstance(self.redis, RedisCluster))

    async def _io(self, pipe: Any) -> list[Any]:
        """One round trip, bounded by ``timeout_s``: Redis time only, never the computation between
        round trips, so a large batch is not mistaken for a slow Redis."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]
        except TimeoutError:
            raise StoreUnavailable(
                f"redis did not answer within {self.timeout_s}s; an append may have been applied: "
                "retry with the same event_ids"
            ) from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.ping()
        except TimeoutError:
            raise StoreUnavailable(f"redis did not answer within {self.timeout_s}s") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None

    # ---- read -----------------------------------------------------------------------------------
    async def answers(self, model: ModelView, user_ids: list[str], shapes: list[str]) -> list[bytes | None]:
        """Each user's stored answer of the request's ``shape`` (see ``write_derived``) if it is
        fresh, else None: one round trip asking only for the answer and the state's header."""
        if not self.answers_ttl_s:
            return [None] * len(user_ids)
        keys = [self.keys(u) for u in user_ids]
        pipe = self.redis.pipeline(transaction=False)
        for k, shape in zip(keys, shapes, strict=True):
            pipe.getrange(k.state, 0, STATE_HEAD_BYTES - 1)
            pipe.hget(k.answers(model.version), shape)
        replies = await self._io(pipe)
        return [
            self._fresh_answer(answer, model, head)
            if head and answer and not isinstance(head, Exception) and not isinstance(answer, Exception)
            else None
            for head, answer in zip(replies[0::2], replies[1::2], strict=True)
        ]

    async def read(self, model: ModelView, user_ids: list[str]) -> list[UserRead]:
        """State, history tokens and query state of many users: one round trip when all are fresh.

        Derived values that are missing, stale (another model version or history state) or
        unreadable are rebuilt from the state and written back; an unreadable state fails only its
        own user (``UserRead.error``)."""
        reads = [UserRead(u, self.keys(u), None) for u in user_ids]
        pipe = self.redis.pipeline(transaction=False)
        for r in reads:
            pipe.get(r.keys.state)
            pipe.get(r.keys.tokens(model.version))
            pipe.get(r.keys.query(model.version))
        replies = await self._io(pipe)
        stale: list[UserRead] = []
        for i, r in enumerate(reads):
            blob, tok_blob, q_blob = replies[3 * i : 3 * i + 3]
            if any(isinstance(x, Exception) for x in (blob, tok_blob, q_blob)):
                r.error = StoreUnavailable("redis refused a read")
                continue
            if not blob:
                continue
            try:
                r.state, r.head = self._usable_state(model, r.user_id, blob), state_head(blob)
            except UserStateCorrupt as exc:
                r.error = exc
                continue
            r.tokens = self._decoded(tok_blob, decode_tokens, "tokens")
            r.query = self._decoded(q_blob, decode_query, "query")
            if r.query is not None and r.query.next_seq != r.state.next_seq:
                r.query = None
            if model.num_buckets and r.state.history_seq and not fresh(r.tokens, model, r.state):
                stale.append(r)
            elif not model.num_buckets or not r.state.history_seq:
                r.tokens = None  # no history to compress (yet)
        if stale:
            await self._rebuild_tokens(model, stale)
        return reads

    def _fresh_answer(self, blob: bytes, model: ModelView, head: bytes) -> bytes | None:
        """A stored answer's body if it was rendered by ``model`` at the state's current sequence
        number (the append script also deletes a user's answers, so this guards only a race with a
        reader that rendered an answer from the state before)."""
        try:
            version, next_seq, body = decode_answer(blob)
            fresh_answer = (version, next_seq) == (model.version, state_next_seq(head))
        except CorruptValue:
            self.counters.repaired("answer")
            return None
        return body if fresh_answer else None

    def _usable_state(self, model: ModelView, user_id: str, blob: bytes) -> State:
        """The user's state, or UserStateCorrupt (an unreadable one is counted: it is the truth and
        cannot be rebuilt) when it cannot be read or has another layout than ``model``'s."""
        try:
            state = decode_state(blob)
            check_layout(state, model)
        except (CorruptValue, LayoutMismatch) as exc:
            self.counters.corrupt_states += isinstance(exc, CorruptValue)
            raise UserStateCorrupt(f"stored state of user {user_id!r} is unusable: {exc}") from None
        return state

    def _decoded(self, blob: bytes | None, decode: Callable[[bytes], T], kind: str) -> T | None:
        if not blob:
            return None
        try:
            return decode(blob)
        except CorruptValue:
            self.counters.repaired(kind)  # derived: rebuilt from the state like a missing one
            return None

    async def _rebuild_tokens(self, model: ModelView, reads: list[UserRead]) -> None:
        self.counters.token_builds += len(reads)
        if model.memory is not None:
            await self._refold(model, reads)
            return
        jobs = [token_job(r.state, None, set(), model) for r in reads if r.state is not None]
        built = await asyncio.to_thread(build_tokens, model, jobs)
        pipe = self._writes()
        for r, tokens in zip(reads, built, strict=True):
            r.tokens = tokens
            self._set_derived(pipe, r.keys, r.head, r.keys.tokens(model.version), encode_tokens(tokens))
        await self._io(pipe)

    async def _refold(self, model: ModelView, reads: list[UserRead]) -> None:
        """Memory compressor: fold each user's raw history from M_0 (a new model, a lost record)."""
        assert model.memory is not None
        pipe = self.redis.pipeline(transaction=False)
        for r in reads:
            pipe.get(r.keys.history)
        blobs = await self._io(pipe)
        histories = [self._history(b) for b in blobs]
        jobs = [
            memory_store.refold_job(model.memory, h, r.state.history_seq)
            for r, h in zip(reads, histories, strict=True)
            if r.state
        ]
        assert len(jobs) == len(reads)  # only users with a state reach a rebuild
        folded = await asyncio.to_thread(memory_store.run_folds, model, jobs)
        pipe = self._writes()
        for r, history, (record, tokens) in zip(reads, histories, folded, strict=True):
            if not history:  # a lost `hist`: serve without history tokens rather than fail
                continue
            r.tokens = tokens
            self._set_derived(pipe, r.keys, r.head, r.keys.memory(model.version), encode_memory(record))
            self._set_derived(pipe, r.keys, r.head, r.keys.tokens(model.version), encode_tokens(tokens))
        await self._io(pipe)

    def _history(self, blob: bytes | None) -> list:  # type: ignore[type-arg]
        if not blob or isinstance(blob, Exception):
            return []
        try:
            return decode_events(blob)
        except CorruptValue:
            self.counters.repaired("history")
            return []

    def _set_derived(self, pipe: Any, keys: UserKeys, head: bytes, key: str, value: bytes) -> None:
        pipe.eval(SET_DERIVED, 2, keys.state, key, head, value, self.derived_ttl_s)

    async def write_derived(
        self,
        model: ModelView,
        queries: Sequence[tuple[UserRead, Query]] = (),
        answers: Sequence[tuple[UserRead, str, bytes]] = (),
    ) -> None:
        """Cache freshly computed query states (each only if its user's state has not moved) and
        rendered answers (stamped with the state's sequence number, by request shape), in one
        round trip."""
        answers = answers if self.answers_ttl_s else ()
        if not queries and not answers:
            return
        pipe = self._writes()
        for r, q in queries:
            self._set_derived(pipe, r.keys, r.head, r.keys.query(model.version), encode_query(q))
        for r, shape, body in answers:
            assert r.state is not None
            key = r.keys.answers(model.version)
            pipe.hset(key, shape, encode_answer(model.version, r.state.next_seq, body))
            pipe.expire(key, self.answers_ttl_s)
        await self._io(pipe)

    async def recompute_all(self, model: ModelView, batch: int = 256) -> int:
        """Build ``model``'s tokens for every user who lacks fresh ones (before switching traffic to
        a new model, or to repair); returns the users scanned."""
        scanned, chunk = 0, []
        try:
            async for key in self.redis.scan_iter(match=f"{self.prefix}:v{SCHEMA}:*:state", count=1000):
                chunk.append(keys_from_state(key.decode() if isinstance(key, bytes) else key))
                if len(chunk) == batch:
                    scanned += await self._warm(model, chunk)
                    chunk = []
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None
        return scanned + (await self._warm(model, chunk) if chunk else 0)

    async def _warm(self, model: ModelView, keys: list[UserKeys]) -> int:
        """Read users by their keys (their ids are not needed): stale tokens get rebuilt."""
        reads = [UserRead("", k, None) for k in keys]
        pipe = self.redis.pipeline(transaction=False)
        for r in reads:
            pipe.get(r.keys.state)
            pipe.get(r.keys.tokens(model.version))
        replies = await self._io(pipe)
        stale = []
        for i, r in enumerate(reads):
            blob, tok = replies[2 * i], replies[2 * i + 1]
            try:
                r.state, r.head = decode_state(blob), state_head(blob)
                check_layout(r.state, model)
            except (CorruptValue, LayoutMismatch, TypeError):
                continue
            if (
                model.num_buckets
                and r.state.history_seq
                and not fresh(self._decoded(tok, decode_tokens, "tokens"), model, r.state)
            ):
                stale.append(r)
        if stale:
            await self._rebuild_tokens(model, stale)
        return len(reads)

    async def inspect(self, model: ModelView, user_id: str) -> Inspected | None:
        """Everything stored for one user, as ``model`` sees it (None: unknown user); one round trip."""
        k = self.keys(user_id)
        named = {
            "state": k.state,
            "tokens": k.tokens(model.version),
            "query": k.query(model.version),
            "answers": k.answers(model.version),
            "memory": k.memory(model.version),
            "history": k.history,
            "dedup": k.dedup,
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(k.state)
        pipe.get(k.tokens(model.version))
        pipe.get(k.query(model.version))
        for key in named.values():
            pipe.memory_usage(key)
        blob, tok, q, *usage = await self._io(pipe)
        if not blob or isinstance(blob, Exception):
            if isinstance(blob, Exception):
                raise StoreUnavailable("redis refused a read")
            return None
        try:
            state = decode_state(blob)
            check_layout(state, model)
        except (CorruptValue, LayoutMismatch) as exc:
            raise UserStateCorrupt(f"stored state of user {user_id!r} is unusable: {exc}") from None
        tokens = self._decoded(tok, decode_tokens, "tokens")
        query = self._decoded(q, decode_query, "query")
        sizes = {name: int(n) for name, n in zip(named, usage, strict=True) if isinstance(n, int)}
        return Inspected(
            state,
            tokens if fresh(tokens, model, state) else None,
            query is not None and query.next_seq == state.next_seq,
            sizes,
        )

    # ---- append ---------------------------------------------------------------------------------
    async def append(self, model: ModelView, events: Iterable[NewEvent], now: float) -> list[UserOutcome]:
        """Apply events (in order) atomically per user; duplicates (by event_id) count once. Every
        user's outcome is returned: one failing user (an unreadable state) does not fail the rest."""
        by_user: dict[str, _Pending] = {}
        for e in events:
            by_user.setdefault(e.user_id, _Pending(self.keys(e.user_id), [])).events.append(e)
        users = list(by_user)  # request order; the locks are taken in sorted order
        step = self.append_chunk
        chunks = [{u: by_user[u] for u in users[i : i + step]} for i in range(0, len(users), step)]
        lanes = asyncio.Semaphore(self.append_lanes)

        async def lane(chunk: dict[str, _Pending]) -> list[UserOutcome]:
            async with lanes:
                return await self._append(model, chunk, now)

        async with self._users.hold(sorted(users)):
            # Every chunk finishes before an error of one is raised: none runs on behind the answer.
            done = await asyncio.gather(*(lane(c) for c in chunks), return_exceptions=True)
        failed = [d for d in done if isinstance(d, BaseException)]
        if failed:
            raise failed[0]
        return [o for chunk in done for o in chunk]  # type: ignore[union-attr]

    async def _append(self, model: ModelView, by_user: dict[str, _Pending], now: float) -> list[UserOutcome]:
        outcomes = {u: UserOutcome(u) for u in by_user}
        todo = list(by_user.items())
        for attempt in range(self.max_retries):
            conflicts = await self._append_round(model, todo, outcomes, now)
            if not conflicts:
                return list(outcomes.values())
            self.counters.conflicts += len(conflicts)
            todo = conflicts
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
        for user, _ in todo:
            outcomes[user].error = StoreConflict(
                f"gave up after {self.max_retries} concurrent writes on one user"
            )
        return list(outcomes.values())

    async def _append_round(
        self, model: ModelView, todo: list[tuple[str, _Pending]], outcomes: dict[str, UserOutcome], now: float
    ) -> list[tuple[str, _Pending]]:
        """Read, compute and compare-and-set every user of ``todo`` once; returns those that conflicted."""
        # Only the keys this model has, and dedup scores only for events that carry ids: commands,
        # not bytes, are what a pipeline costs this process. (No MGET: redis-py refuses it in a
        # cluster pipeline although a user's keys share one slot.)
        pipe = self.redis.pipeline(transaction=False)
        ids = [[e.event_id for e in p.events if e.event_id is not None] for _, p in todo]
        for (_, p), user_ids in zip(todo, ids, strict=True):
            pipe.get(p.keys.state)
            pipe.get(p.keys.tokens(model.version))
            if model.memory is not None:
                pipe.get(p.keys.memory(model.version))
            if user_ids:
                pipe.zmscore(p.keys.dedup, user_ids)
        replies = iter(await self._io(pipe))
        ready: list[tuple[str, _Pending, tuple[Any, ...]]] = []
        for (user, p), user_ids in zip(todo, ids, strict=True):
            blob, tok = next(replies), next(replies)
            mem = next(replies) if model.memory is not None else None
            scores = next(replies) if user_ids else []
            if any(isinstance(x, Exception) for x in (blob, tok, mem, scores)):
                outcomes[user].error = StoreUnavailable("redis refused a read")
                continue
            try:
                state = self._usable_state(model, user, blob) if blob else None
            except UserStateCorrupt as exc:
                outcomes[user].error = UserStateCorrupt(f"{exc}; events not applied")
                continue
            p.head = state_head(blob)
            ready.append(
                (
                    user,
                    p,
                    (
                        state,
                        self._decoded(tok, decode_tokens, "tokens"),
                        self._decoded(mem, decode_memory, "memory"),
                        list(scores),
                    ),
                )
            )
        if not ready:
            return []
        await asyncio.to_thread(self._compute, model, ready, now)
        if model.memory is not None:
            await self._fold_histories(model, [p for _, p, _ in ready])
        pipe = self._writes()
        for _, p, _ in ready:
            self._queue_append(pipe, model, p, now)
        results = await self._io(pipe)
        conflicts = []
        for (user, p, _), ok in zip(ready, results, strict=True):
            if isinstance(ok, Exception):
                outcomes[user].error = StoreUnavailable(f"redis refused the append: {type(ok).__name__}")
            elif ok == 1:
                assert p.result is not None
                outcomes[user].accepted, outcomes[user].duplicates = (
                    len(p.result.accepted),
                    p.result.duplicates,
                )
            else:
                conflicts.append((user, p))
        return conflicts

    def _compute(
        self, model: ModelView, ready: list[tuple[str, _Pending, tuple[Any, ...]]], now: float
    ) -> None:
        """Off the event loop: the rule for every user, then one history-graph call for all the
        buckets that changed. Tokens left None are still fresh in Redis and are not rewritten."""
        jobs: list[TokenJob] = []
        owners: list[_Pending] = []
        for _, p, (state, tokens, memory, expiry) in ready:
            was_fresh = state is not None and fresh(tokens, model, state)
            p.result = apply_events(state, p.events, expiry, now, model, self.max_buckets)
            p.tokens, p.history_op = None, b""
            if model.memory is not None:
                p.memory = memory if was_fresh and state is not None and fresh(memory, model, state) else None
                p.tokens = tokens if p.memory is not None else None
                continue
            new = p.result.state
            if model.num_buckets and new.history_seq and (p.result.touched or not was_fresh):
                jobs.append(token_job(new, tokens if was_fresh else None, p.result.touched, model))
                owners.append(p)
        for p, built in zip(owners, build_tokens(model, jobs) if jobs else [], strict=True):
            p.tokens = built

    async def _fold_histories(self, model: ModelView, pending: list[_Pending]) -> None:
        """Memory compressor: extend each memory by the events that joined the history, or refold
        the whole history (a new model, a lost record, or a late event inside folded segments)."""
        assert model.memory is not None
        refold = [p for p in pending if p.result and memory_store.needs_refold(p.memory, p.result)]
        pipe = self.redis.pipeline(transaction=False)
        for p in refold:
            pipe.get(p.keys.history)
        blobs = await self._io(pipe) if refold else []
        histories = {id(p): self._history(b) for p, b in zip(refold, blobs, strict=True)}
        jobs, owners = [], []
        for p in pending:
            assert p.result is not None
            new_events = sorted(p.result.evicted, key=lambda e: e.key)
            if id(p) in histories:
                history = sorted(histories[id(p)] + new_events, key=lambda e: e.key)
                history = memory_store.bounded(history, model.memory.segment_len, self.max_history)
                p.history_op = b"s" + encode_events(history)
                p.result.state.history_len = len(history)
                if history:
                    jobs.append(memory_store.refold_job(model.memory, history, p.result.state.history_seq))
                    owners.append(p)
            elif new_events:
                # Appending past the bound also drops the oldest whole segments, in the same script:
                # the memory already holds them, and only a refold would read them again.
                drop = memory_store.overflow(
                    p.result.state.history_len, model.memory.segment_len, self.max_history
                )
                p.history_op = (b"t%d:" % (drop * EVENT.itemsize) if drop else b"a") + encode_events(
                    new_events
                )
                p.result.state.history_len -= drop
                jobs.append(
                    memory_store.extend_job(
                        model.memory, p.memory, p.tokens, new_events, p.result.state.history_seq
                    )
                )
                owners.append(p)
        folded = await asyncio.to_thread(memory_store.run_folds, model, jobs)
        for p, (record, tokens) in zip(owners, folded, strict=True):
            p.memory, p.tokens = record, tokens

    def _queue_append(self, pipe: Any, model: ModelView, p: _Pending, now: float) -> None:
        assert p.result is not None
        expiry = now + self.dedup_retention_s
        ids = [x for e in p.result.accepted if e.event_id is not None for x in (expiry, e.event_id)]
        pipe.eval(
            APPEND,
            6,
            p.keys.state,
            p.keys.dedup,
            p.keys.tokens(model.version),
            p.keys.history,
            p.keys.memory(model.version),
            p.keys.answers(model.version),
            p.head,
            encode_state(p.result.state),
            encode_tokens(p.tokens) if p.tokens is not None else b"",
            p.history_op,
            encode_memory(p.memory) if p.memory is not None and model.memory is not None else b"",
            self.user_ttl_s,
            self.derived_ttl_s,
            now,
            self.dedup_retention_s,
            *ids,
        )


async def ensure_layout(redis: Redis, prefix: str, model: ModelView) -> None:
    """The first model to serve a store fixes its layout (compressor, L, G); a model with another
    layout is refused, before it reads any user, with what to do instead."""
    layout = f"kind={model.kind} L={model.recent_len} G={model.bucket_size}"
    try:
        await redis.hsetnx(meta_key(prefix), "layout", layout)  # type: ignore[misc]
        stored = await redis.hget(meta_key(prefix), "layout")  # type: ignore[misc]
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None
    stored = stored.decode() if isinstance(stored, bytes) else stored
    if stored != layout:
        raise BundleError(
            f"the store under prefix {prefix!r} holds user state for {stored} (kind 0: buckets, 1: memory); "
            f"this bundle needs {layout}. Such a change needs a new key prefix and a backfill"
        )
