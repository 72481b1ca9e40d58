"""Redis user-state store: recent window + raw buckets (the truth) + precompressed history tokens.

A request never re-reads the long-term history: ``read`` fetches the recent window and the tokens
(2 keys per user, one pipeline for the whole batch). ``append`` runs the shared bucketing rule
incrementally and recomputes only the buckets an event lands in. For a memory-compressor bundle
the raw history and the folded memory replace the buckets (service.memory_store); reads are the same.

Consistency: appends are optimistic transactions (WATCH the users' recent keys, read, compute,
MULTI/EXEC; retry on conflict), so concurrent writers on one user never lose an event. The raw
state is the truth; tokens are derived and stamped with (model version, history seq). A reader
that sees tokens with another stamp (another model, or a torn read between two keys) rebuilds
them from the raw buckets instead of serving them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError

from model.bucketing import Bucket, CategoriesOf, Event, UserState, bucket_categories
from service.errors import StoreConflict, StoreUnavailable
from service.memory_store import FoldJob, MemoryView, extend_job, refold_job, run_folds
from service.store_codec import (
    SCHEMA,
    MemoryRecord,
    Recent,
    Tokens,
    UserKeys,
    decode_bucket,
    decode_events,
    decode_memory,
    decode_recent,
    decode_tokens,
    encode_bucket,
    encode_events,
    encode_memory,
    encode_recent,
    encode_tokens,
    keys_from_recent,
    user_keys,
)

TokenFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ModelView:
    """What the store needs from the active bundle."""

    version: str
    recent_len: int  # L
    num_buckets: int  # history tokens: V buckets or C memory slots (0: the model uses none)
    bucket_size: int  # G (0 for the memory compressor: it keeps the whole raw history instead)
    d_model: int
    categories_of: CategoriesOf
    bucket_tokens: TokenFn  # (n, G) items, (n,) categories -> (n, D): the exported history graph
    memory: MemoryView | None = None  # set for a memory-compressor bundle


@dataclass(frozen=True)
class NewEvent:
    user_id: str
    item: int  # internal id
    action: int  # internal id
    ts: int
    event_id: str | None = None


@dataclass
class AppendResult:
    accepted: int = 0
    duplicates: int = 0


@dataclass
class Snapshot:
    """One user's state as the engine needs it; ``tokens`` is None when the user has no history."""

    user_id: str
    recent: Recent | None
    tokens: Tokens | None


@dataclass
class _Pending:
    """One user's state during an append transaction."""

    keys: UserKeys
    events: list[NewEvent]
    recent: Recent
    old_tokens: Tokens | None
    dedup_scores: list[float | None]
    old_memory: MemoryRecord | None = None
    state: UserState = field(init=False)
    rebuild: bool = False  # stored tokens unusable for this model: rebuild from all buckets / history
    history: list[Event] = field(default_factory=list)  # memory compressor, on rebuild: the raw history
    new_recent: Recent | None = None
    new_tokens: Tokens | None = None
    evicted: list[Event] = field(default_factory=list)
    accepted: list[NewEvent] = field(default_factory=list)
    duplicates: int = 0


def tokens_fresh(tokens: Tokens | MemoryRecord | None, model: ModelView, recent: Recent) -> bool:
    """The one rule for using stored derived state (tokens, a folded memory): same model version and
    same history state."""
    return tokens is not None and (tokens.version, tokens.history_seq) == (model.version, recent.history_seq)


def _buckets_to_arrays(buckets: list[Bucket], g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = np.zeros((len(buckets), g), np.int32)
    for j, b in enumerate(buckets):
        items[j, : len(b.items)] = b.items
    cats = np.array([b.category for b in buckets], np.int32)
    newest = np.array([b.newest for b in buckets], np.int64).reshape(len(buckets), 2)
    return cats, newest, items


def _rank(cat: int, newest: tuple[int, int]) -> tuple[int, int, int]:
    # The same order as model.bucketing: newest key descending, then category ascending.
    return (-newest[0], -newest[1], cat)


class Store:
    def __init__(
        self,
        redis: Redis,
        prefix: str = "causerec",
        dedup_retention_s: int = 86_400,
        max_retries: int = 200,
        per_user_transactions: bool = False,
        per_user_concurrency: int = 16,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.dedup_retention_s = dedup_retention_s
        self.max_retries = max_retries
        # Redis Cluster cannot WATCH keys of several slots in one transaction.
        self.per_user_transactions = per_user_transactions
        # Store-wide: each per-user transaction holds a pooled connection while it WATCHes.
        self._per_user_slots = asyncio.Semaphore(per_user_concurrency)
        # Writes from one process are serialised: the append path is CPU-bound on one event loop,
        # so concurrent appends gain no parallelism and only make each other's WATCH fail.
        # Optimistic transactions still guard against other workers and replicas.
        self._writes = asyncio.Lock()
        self.conflicts = 0  # transactions aborted by a concurrent write (then retried)

    def keys(self, user_id: str) -> UserKeys:
        return user_keys(self.prefix, user_id)

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None

    # ---- read -----------------------------------------------------------------------------------
    async def read(self, model: ModelView, user_ids: list[str], now: float) -> list[Snapshot]:
        """Recent window + history tokens for a batch of users: one round trip when tokens are fresh.

        Tokens stamped with another model version or history seq (a new model, or a write that
        landed between the two GETs) are never served: they are rebuilt from the raw buckets.
        """
        keys = [self.keys(u) for u in user_ids]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for k in keys:
                pipe.get(k.recent)
                pipe.get(k.tokens)
            replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None
        snaps, stale = [], {}
        for i, (user, k) in enumerate(zip(user_ids, keys, strict=True)):
            blob, tok_blob = replies[2 * i], replies[2 * i + 1]
            recent = decode_recent(blob) if blob else None
            tokens = decode_tokens(tok_blob) if tok_blob else None
            if model.num_buckets == 0 or recent is None or recent.history_seq == 0:
                tokens = None  # no history to compress (yet)
            elif not tokens_fresh(tokens, model, recent):
                stale[k] = i
            snaps.append(Snapshot(user, recent, tokens))
        if stale:
            for p in await self._transact(model, {k: [] for k in stale}, now):
                snaps[stale[p.keys]] = Snapshot(snaps[stale[p.keys]].user_id, p.new_recent, p.new_tokens)
        return snaps

    async def recompute_all(self, model: ModelView, now: float, batch: int = 256) -> int:
        """Rebuild the tokens of every user whose tokens are not for ``model``; returns users scanned."""
        pattern = f"{self.prefix}:v{SCHEMA}:*:recent"
        scanned = 0
        chunk: list[UserKeys] = []
        try:
            async for key in self.redis.scan_iter(match=pattern, count=1000):
                chunk.append(keys_from_recent(key.decode() if isinstance(key, bytes) else key))
                if len(chunk) == batch:
                    await self._transact(model, dict.fromkeys(chunk, []), now)
                    scanned, chunk = scanned + len(chunk), []
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None
        if chunk:
            await self._transact(model, dict.fromkeys(chunk, []), now)
        return scanned + len(chunk)

    # ---- append ---------------------------------------------------------------------------------
    async def append(self, model: ModelView, events: Iterable[NewEvent], now: float) -> AppendResult:
        """Apply events (in order) atomically per user; duplicates (by event_id) count once."""
        by_user: dict[UserKeys, list[NewEvent]] = {}
        for e in events:
            by_user.setdefault(self.keys(e.user_id), []).append(e)
        pending = await self._transact(model, by_user, now)
        return AppendResult(sum(len(p.accepted) for p in pending), sum(p.duplicates for p in pending))

    async def _transact(
        self, model: ModelView, by_user: dict[UserKeys, list[NewEvent]], now: float
    ) -> list[_Pending]:
        """One transaction for the whole batch when nobody else writes these users (4 round trips
        for any number of users); on a conflict, one transaction per user, so a single contended
        user never makes the whole batch retry."""
        async with self._writes:
            return await self._transact_unlocked(model, by_user, now)

    async def _transact_unlocked(
        self, model: ModelView, by_user: dict[UserKeys, list[NewEvent]], now: float
    ) -> list[_Pending]:
        if not self.per_user_transactions and len(by_user) > 1:
            batched = await self._transact_group(model, by_user, now, attempts=1)
            if batched is not None:
                return batched

        async def one(keys: UserKeys, events: list[NewEvent]) -> list[_Pending]:
            async with self._per_user_slots:
                done = await self._transact_group(model, {keys: events}, now, attempts=self.max_retries)
            if done is None:
                raise StoreConflict(f"gave up after {self.max_retries} conflicting writes on one user")
            return done

        groups = await asyncio.gather(*(one(k, v) for k, v in by_user.items()))
        return [p for group in groups for p in group]

    async def _transact_group(
        self, model: ModelView, by_user: dict[UserKeys, list[NewEvent]], now: float, attempts: int
    ) -> list[_Pending] | None:
        """WATCH, read, compute, MULTI/EXEC; None if every attempt met a concurrent write."""
        broken_connections = 0
        for attempt in range(attempts):
            try:
                async with self.redis.pipeline(transaction=True) as tx:
                    await tx.watch(*(k.recent for k in by_user))
                    pending = await self._load(model, by_user)
                    await self._apply(model, pending, now)
                    tx.multi()  # type: ignore[no-untyped-call]
                    self._queue_writes(tx, model, pending, now)
                    await tx.execute()
                    return pending
            except WatchError:
                # Another writer touched one of these users: re-read and recompute.
                self.conflicts += 1
                if attempt + 1 < attempts:
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
            except RedisConnectionError as exc:
                # redis-py does not retry WATCH on a dead pooled connection (e.g. after a Redis
                # restart); it drops that connection, so the next attempt connects afresh.
                broken_connections += 1
                if broken_connections > 2 or attempts == 1:
                    raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None
        return None

    async def _load(self, model: ModelView, by_user: dict[UserKeys, list[NewEvent]]) -> list[_Pending]:
        reads = self.redis.pipeline(transaction=False)
        for k, events in by_user.items():
            reads.get(k.recent)
            reads.get(k.tokens)
            if model.memory is not None:
                reads.get(k.memory)
            ids = [e.event_id for e in events if e.event_id is not None]
            if ids:
                reads.zmscore(k.dedup, ids)
        replies = iter(await reads.execute())
        pending = []
        for k, events in by_user.items():
            blob, tok_blob = next(replies), next(replies)
            mem_blob = next(replies) if model.memory is not None else None
            ids = [e.event_id for e in events if e.event_id is not None]
            scores = list(next(replies)) if ids else []
            recent = decode_recent(blob) if blob else Recent(0, 0, model.recent_len, model.bucket_size, [])
            if (recent.recent_len, recent.bucket_size) != (model.recent_len, model.bucket_size):
                raise StoreConflict(
                    f"stored state has L={recent.recent_len}, G={recent.bucket_size}; "
                    f"the model needs L={model.recent_len}, G={model.bucket_size} "
                    "(G=0: the memory compressor's full history); backfill a store for this model"
                )
            tokens = decode_tokens(tok_blob) if tok_blob else None
            memory = decode_memory(mem_blob) if mem_blob else None
            pending.append(_Pending(k, events, recent, tokens, scores, memory))
        return pending

    async def _apply(self, model: ModelView, pending: list[_Pending], now: float) -> None:
        """Run the bucketing rule: recent window first, then fetch only the buckets evictions touch."""
        for p in pending:
            p.state = UserState(model.recent_len, model.bucket_size, recent=list(p.recent.events))
            seen_ids: dict[str, float | None] = {}
            it = iter(p.dedup_scores)
            for e in p.events:
                if e.event_id is not None:
                    score = next(it)
                    if e.event_id in seen_ids or (score is not None and score > now):  # score = expiry
                        p.duplicates += 1
                        seen_ids[e.event_id] = score
                        continue
                    seen_ids[e.event_id] = score
                event = Event(e.ts, p.recent.next_seq + len(p.accepted), e.item, e.action)
                p.accepted.append(e)
                evicted = p.state.push_recent(event)
                if evicted is not None:
                    p.evicted.append(evicted)
        if model.memory is not None:
            await self._fetch_histories(model, pending)
            return
        fetch = self.redis.pipeline(transaction=False)
        plan: list[tuple[_Pending, list[int] | None]] = []
        for p in pending:
            p.rebuild = self._needs_rebuild(model, p)
            if p.rebuild:
                fetch.hgetall(p.keys.buckets)
                plan.append((p, None))
            elif p.evicted:
                wanted = sorted(
                    {c for e in p.evicted for c in bucket_categories(e.item, model.categories_of)}
                )
                fetch.hmget(p.keys.buckets, [str(c) for c in wanted])
                plan.append((p, wanted))
        replies = await fetch.execute() if plan else []
        for (p, cats), reply in zip(plan, replies, strict=True):
            if cats is None:
                p.state.buckets = {int(c): decode_bucket(b) for c, b in reply.items()}
            else:
                p.state.buckets = {c: decode_bucket(b) for c, b in zip(cats, reply, strict=True) if b}

    async def _fetch_histories(self, model: ModelView, pending: list[_Pending]) -> None:
        """Memory compressor: read the raw history of the users whose memory must be refolded."""
        refold = [p for p in pending if self._needs_refold(model, p)]
        fetch = self.redis.pipeline(transaction=False)
        for p in refold:
            p.rebuild = True
            fetch.get(p.keys.history)
        for p, blob in zip(refold, await fetch.execute() if refold else [], strict=True):
            p.history = decode_events(blob) if blob else []

    @staticmethod
    def _needs_refold(model: ModelView, p: _Pending) -> bool:
        """Whether the memory cannot be extended by this batch: stamped for another model or history
        state (with the tokens, written in the same transaction), or an evicted event older than
        the newest history event (it lands inside an already folded segment)."""
        if p.recent.history_seq == 0:
            return False
        if not (tokens_fresh(p.old_tokens, model, p.recent) and tokens_fresh(p.old_memory, model, p.recent)):
            return True
        assert p.old_memory is not None  # fresh
        return any(e.key < p.old_memory.last_key for e in p.evicted)

    @staticmethod
    def _needs_rebuild(model: ModelView, p: _Pending) -> bool:
        """Whether the stored tokens cannot be updated incrementally for this model."""
        return (
            model.num_buckets > 0
            and p.recent.history_seq > 0
            and not tokens_fresh(p.old_tokens, model, p.recent)
        )

    def _queue_writes(self, tx: Any, model: ModelView, pending: list[_Pending], now: float) -> None:
        for p in pending:
            ids = {e.event_id: now + self.dedup_retention_s for e in p.accepted if e.event_id is not None}
            if ids:
                tx.zadd(p.keys.dedup, ids)
                tx.zremrangebyscore(p.keys.dedup, "-inf", now)
                tx.expire(p.keys.dedup, self.dedup_retention_s)
        if model.memory is None:
            self._queue_bucket_writes(tx, model, pending)
        else:
            self._queue_memory_writes(tx, model, model.memory, pending)

    @staticmethod
    def _write_recent(tx: Any, model: ModelView, p: _Pending, history_changed: bool) -> int:
        """Queue the new recent window; return its history seq, which derived state is stamped with:
        the new next seq when the history changed, else unchanged."""
        next_seq = p.recent.next_seq + len(p.accepted)
        history_seq = next_seq if history_changed else p.recent.history_seq
        p.new_recent = Recent(next_seq, history_seq, model.recent_len, model.bucket_size, p.state.recent)
        if p.accepted:
            tx.set(p.keys.recent, encode_recent(p.new_recent))
        return history_seq

    def _queue_memory_writes(
        self, tx: Any, model: ModelView, view: MemoryView, pending: list[_Pending]
    ) -> None:
        jobs: list[tuple[_Pending, FoldJob]] = []
        for p in pending:
            new_events = sorted(p.evicted, key=lambda e: e.key)
            history_seq = self._write_recent(tx, model, p, history_changed=bool(new_events))
            if p.rebuild:
                history = sorted(p.history + new_events, key=lambda e: e.key)
                if new_events:
                    tx.set(p.keys.history, encode_events(history))
                if history:  # an empty one means a deleted `hist` key: serve without history tokens
                    jobs.append((p, refold_job(view, history, history_seq)))
            elif new_events:
                tx.append(p.keys.history, encode_events(new_events))
                old, exclude = p.old_memory, []
                if old is None:  # the user's first history event
                    old = MemoryRecord(model.version, 0, 0, (0, 0), view.initial, [])
                elif p.old_tokens is not None:
                    exclude = [int(i) for i in p.old_tokens.items.ravel() if i]
                jobs.append((p, extend_job(view, old, exclude, new_events, history_seq)))
            elif history_seq > 0:
                p.new_tokens = p.old_tokens  # fresh (checked by _needs_refold): hand them back
        folded = run_folds(view, model.version, [job for _, job in jobs])
        for (p, _), (record, tokens) in zip(jobs, folded, strict=True):
            p.new_tokens = tokens
            tx.set(p.keys.memory, encode_memory(record))
            tx.set(p.keys.tokens, encode_tokens(tokens))

    def _queue_bucket_writes(self, tx: Any, model: ModelView, pending: list[_Pending]) -> None:
        jobs: list[_TokenJob] = []
        for p in pending:
            rebuild = p.rebuild
            touched: set[int] = set()
            for e in p.evicted:
                touched |= p.state.add_to_history(e, model.categories_of)
            history_seq = self._write_recent(tx, model, p, history_changed=bool(touched))
            if touched:
                tx.hset(p.keys.buckets, mapping={str(c): encode_bucket(p.state.buckets[c]) for c in touched})
            if model.num_buckets and not (touched or rebuild) and p.recent.history_seq > 0:
                # Still fresh (a concurrent writer may have refreshed them since a reader saw them
                # stale): hand them back, or a repairing reader would lose the user's history.
                p.new_tokens = p.old_tokens
            if model.num_buckets and (touched or rebuild):
                old = None if rebuild else p.old_tokens
                reuse = (
                    {}
                    if old is None
                    else {
                        int(c): old.tokens[j]
                        for j, c in enumerate(old.categories.tolist())
                        if int(c) not in touched
                    }
                )
                jobs.append(
                    _TokenJob(p.keys, history_seq, self._top_buckets(model, p.state, old, touched), reuse)
                )
        by_keys = {p.keys: p for p in pending}
        for keys, tokens in compute_tokens(model, jobs):
            by_keys[keys].new_tokens = tokens
            tx.set(keys.tokens, encode_tokens(tokens))

    @staticmethod
    def _top_buckets(
        model: ModelView, state: UserState, old: Tokens | None, touched: set[int]
    ) -> list[Bucket]:
        """The new top V. Incrementally: the old top V (touched ones refreshed) plus touched buckets.

        No untouched bucket outside the old top V can enter it: buckets only ever gain recency, and
        only touched ones gain. So this equals state.top(V) over all buckets (property-tested).
        """
        if old is None:
            return state.top(model.num_buckets)
        candidates: dict[int, Bucket] = {}
        for cat, row, (ts, seq) in zip(
            old.categories.tolist(), old.items.tolist(), old.newest.tolist(), strict=True
        ):
            candidates[cat] = Bucket(cat, tuple(i for i in row if i), ((ts, seq),))
        for cat in touched:
            entries = state.buckets[cat]
            candidates[cat] = Bucket(
                cat, tuple(i for _, i in reversed(entries)), tuple(key for key, _ in reversed(entries))
            )
        return sorted(candidates.values(), key=lambda b: _rank(b.category, b.newest))[: model.num_buckets]


@dataclass
class _TokenJob:
    keys: UserKeys
    history_seq: int
    buckets: list[Bucket]  # the new top V
    reuse: dict[int, np.ndarray]  # category -> token still valid (untouched, same model)


def compute_tokens(model: ModelView, jobs: list[_TokenJob]) -> list[tuple[UserKeys, Tokens]]:
    """Tokens for every job with one history-graph call for all buckets that need (re)computing."""
    need = [(b.items, b.category) for job in jobs for b in job.buckets if b.category not in job.reuse]
    computed = np.zeros((0, model.d_model), np.float32)
    if need:
        items = np.zeros((len(need), model.bucket_size), np.int64)
        for row, (bucket_items, _) in enumerate(need):
            items[row, : len(bucket_items)] = bucket_items
        computed = model.bucket_tokens(items, np.array([c for _, c in need], np.int64))
    out, cursor = [], 0
    for job in jobs:
        rows = []
        for b in job.buckets:
            if b.category in job.reuse:
                rows.append(job.reuse[b.category])
            else:
                rows.append(computed[cursor])
                cursor += 1
        cats, newest, items = _buckets_to_arrays(job.buckets, model.bucket_size)
        tokens = np.stack(rows).astype(np.float32) if rows else np.zeros((0, model.d_model), np.float32)
        out.append((job.keys, Tokens(model.version, job.history_seq, cats, newest, items, tokens)))
    return out
