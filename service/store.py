"""Redis I/O of the user-state store: what is read and written, in how many round trips, and what a
concurrent writer or a broken value does. The rules live in service.user_state (pure, tested by
properties); this module only reads, calls them off the event loop, and writes.

Append (an /events batch): one MULTI/EXEC (a plain pipeline on a cluster) runs the log script once
per user: it drops event ids seen within the retention, appends the others to the user's log (their
acknowledgement: AOF-durable once EXEC returns) and deletes the user's stored answers. No state is
read or decoded. A user whose log reached ``fold_after`` events is then folded (service.store_fold:
the log's events applied to the state, the touched buckets' tokens recomputed, compare-and-set).

Answers (the first stage of a /recommend batch): one pipeline asks for each user's stored answer
of the request's shape and the state's header; a fresh answer ends that request. Read (the users
without one): one pipeline GETs the state, history tokens, query state and log for the served model
version; users with logged events are folded first, so a read reflects every acknowledged event.
Fresh derived state is used as is; stale or missing tokens are rebuilt from the state and written
back (only if the state did not move meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import memory_store, store_fold
from service.errors import BundleError, StoreUnavailable, UserStateCorrupt
from service.redis_scripts import LOG, SET_ANSWER, SET_DERIVED
from service.store_codec import (
    FORMAT,
    LOG_EVENT,
    READABLE_STATE_FORMATS,
    SCHEMA,
    STATE_HEAD_BYTES,
    CorruptValue,
    Query,
    UserKeys,
    decode_answer,
    decode_query,
    decode_state,
    decode_tokens,
    encode_answer,
    encode_log_records,
    encode_memory,
    encode_query,
    encode_tokens,
    keys_from_state,
    meta_key,
    state_head,
    state_next_seq,
)
from service.store_io import StoreIO
from service.store_types import Inspected, UserOutcome, UserRead
from service.user_state import (
    LayoutMismatch,
    ModelView,
    NewEvent,
    build_tokens,
    check_layout,
    fresh,
    token_job,
)


class Store(StoreIO):
    append_chunk = 128  # users per log round trip: one MULTI/EXEC, one fsync
    max_background_folds = 4  # fold tasks started by appends and still running

    def __init__(self, *args: Any, fold_in_background: bool = False, **kwargs: Any) -> None:
        """``fold_in_background``: an append answers before the folds it starts are done (the
        service); else it waits for them (a bulk load, which wants states built and its pace set by
        them, and tests that read Redis directly)."""
        super().__init__(*args, **kwargs)
        self.fold_in_background = fold_in_background
        self._folds: set[asyncio.Task[None]] = set()

    # ---- append ---------------------------------------------------------------------------------
    async def append(self, model: ModelView, events: Iterable[NewEvent], now: float) -> list[UserOutcome]:
        """Log events (in order) atomically per user; duplicates (by event_id) count once. Every
        user's outcome is returned: one failing user (a state of another layout) does not fail the
        rest. An accepted event is in Redis when this returns. Users whose log reached
        ``fold_after`` events are folded after it returns, in the background (``settle`` waits for
        that), or before it returns; a fold that fails or is not started loses nothing: the events
        stay logged, and the user's next read or append folds them."""
        by_user: dict[str, list[NewEvent]] = {}
        for e in events:
            by_user.setdefault(e.user_id, []).append(e)
        users = list(by_user)
        outcomes: list[UserOutcome] = []
        due: list[str] = []
        full = 1 + self.fold_after * LOG_EVENT.size  # bytes of a log holding fold_after events
        for lo in range(0, len(users), self.append_chunk):
            chunk = users[lo : lo + self.append_chunk]
            pipe = self.writes()
            for user in chunk:
                self._queue_log(pipe, model, user, by_user[user], now)
            for user, reply in zip(chunk, await self.io(pipe), strict=True):
                outcome = UserOutcome(user)
                outcomes.append(outcome)
                if isinstance(reply, Exception):
                    outcome.error = StoreUnavailable(f"redis refused the append: {type(reply).__name__}")
                    continue
                accepted, duplicates, logged = (int(x) for x in reply)
                if accepted < 0:
                    outcome.error = UserStateCorrupt(
                        f"stored state of user {user!r} is unusable: written for another layout than "
                        f"the model's (L={model.recent_len}, G={model.bucket_size}), or unreadable; "
                        "events not applied"
                    )
                    continue
                outcome.accepted, outcome.duplicates = accepted, duplicates
                if logged >= full:
                    due.append(user)
        if due and self.fold_in_background:
            self._fold_later(model, due)
        elif due:
            with contextlib.suppress(StoreUnavailable):  # logged all the same: a later fold applies them
                await store_fold.fold(self, model, due)
        return outcomes

    def _fold_later(self, model: ModelView, users: list[str]) -> None:
        """Fold ``users`` in a task of their own: the append's answer does not wait for it. At most
        ``max_background_folds`` run at once; past that the users stay logged (their next append
        starts a fold again, a read folds them itself), so a burst cannot pile up tasks."""
        if len(self._folds) >= self.max_background_folds:
            self.counters.folds_deferred += len(users)
            return

        async def run() -> None:
            # Acknowledged events are safe whatever happens here: they stay logged until a fold.
            with contextlib.suppress(StoreUnavailable):
                await store_fold.fold(self, model, users)

        task = asyncio.create_task(run())
        self._folds.add(task)
        task.add_done_callback(self._folds.discard)

    async def settle(self) -> None:
        """Wait for the folds appends started (tests, shutdown)."""
        while self._folds:
            await asyncio.gather(*self._folds, return_exceptions=True)

    def _queue_log(
        self, pipe: object, model: ModelView, user: str, events: list[NewEvent], now: float
    ) -> None:
        k = self.keys(user)
        pipe.eval(  # type: ignore[attr-defined]
            LOG,
            4,
            k.log,
            k.dedup,
            k.answers(model.version),
            k.state,
            now,
            now + self.dedup_retention_s,
            self.dedup_retention_s,
            self.user_ttl_s,
            model.layout,
            READABLE_STATE_FORMATS,
            bytes([FORMAT]),
            encode_log_records([(e.ts, e.item, e.action) for e in events]),
            *[e.event_id or "" for e in events],
        )

    async def fold(self, model: ModelView, user_ids: list[str]) -> list[UserRead]:
        """Fold these users' logged events into their states now (service.store_fold)."""
        folded = await store_fold.fold(self, model, user_ids)
        return [
            UserRead(u, self.keys(u), f.state, f.tokens, error=f.error, head=f.head)
            for u, f in ((u, folded[u]) for u in user_ids)
        ]

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
        replies = await self.io(pipe)
        return [
            self._fresh_answer(answer, model, head)
            if head and answer and not isinstance(head, Exception) and not isinstance(answer, Exception)
            else None
            for head, answer in zip(replies[0::2], replies[1::2], strict=True)
        ]

    async def read(self, model: ModelView, user_ids: list[str]) -> list[UserRead]:
        """State, history tokens and query state of many users: one round trip when all are fresh.

        Users with logged events are folded first. Derived values that are missing, stale (another
        model version or history state) or unreadable are rebuilt from the state and written back;
        an unreadable state fails only its own user (``UserRead.error``)."""
        reads = [UserRead(u, self.keys(u), None) for u in user_ids]
        pipe = self.redis.pipeline(transaction=False)
        for r in reads:
            pipe.get(r.keys.query(model.version))
            store_fold.queue_read(pipe, r.keys, model)  # what a fold of this user needs too
        replies = iter(await self.io(pipe))
        logged: dict[str, store_fold.Read] = {}
        for r in reads:
            q_blob = next(replies)
            got = store_fold.take_read(replies, model)
            blob, tok_blob, _, log = got
            if any(isinstance(x, Exception) for x in (q_blob, *got)):
                r.error = StoreUnavailable("redis refused a read")
            elif log:  # folded first; its query state is then stale: the fold moves the user's seq
                logged[r.user_id] = got
            elif blob:
                try:
                    r.state, r.head = self.usable_state(model, r.user_id, blob), state_head(blob)
                except UserStateCorrupt as exc:
                    r.error = exc
                    continue
                r.tokens = self.decoded(tok_blob, decode_tokens, "tokens")
                r.query = self.decoded(q_blob, decode_query, "query")
                if r.query is not None and r.query.next_seq != r.state.next_seq:
                    r.query = None
        if logged:
            folded = await store_fold.fold(self, model, list(logged), logged, write=False)
            for r in reads:
                if r.user_id in logged:
                    f = folded[r.user_id]
                    r.state, r.tokens, r.head, r.error, r.fold = f.state, f.tokens, f.head, f.error, f.pending
        stale = []
        for r in reads:
            if r.state is None:
                continue
            if model.num_buckets and r.state.history_seq and not fresh(r.tokens, model, r.state):
                stale.append(r)
            elif not model.num_buckets or not r.state.history_seq:
                r.tokens = None  # no history to compress (yet)
        if stale:
            await self._rebuild_tokens(model, stale)
        return reads

    def _fresh_answer(self, blob: bytes, model: ModelView, head: bytes) -> bytes | None:
        """A stored answer's body if it was rendered by ``model`` at the state's current sequence
        number (an answer is kept only while no event waits in the log, and logging an event
        deletes the user's answers: SET_ANSWER, LOG)."""
        try:
            version, next_seq, body = decode_answer(blob)
            fresh_answer = (version, next_seq) == (model.version, state_next_seq(head))
        except CorruptValue:
            self.counters.repaired("answer")
            return None
        return body if fresh_answer else None

    async def _rebuild_tokens(self, model: ModelView, reads: list[UserRead]) -> None:
        self.counters.token_builds += len(reads)
        if model.memory is not None:
            await self._refold(model, reads)
            return
        jobs = [token_job(r.state, None, set(), model) for r in reads if r.state is not None]
        built = await asyncio.to_thread(build_tokens, model, jobs)
        pipe = self.writes()
        for r, tokens in zip(reads, built, strict=True):
            r.tokens = tokens
            self._set_derived(pipe, r.keys, r.head, r.keys.tokens(model.version), encode_tokens(tokens))
        await self.io(pipe)

    async def _refold(self, model: ModelView, reads: list[UserRead]) -> None:
        """Memory compressor: fold each user's raw history from M_0 (a new model, a lost record)."""
        assert model.memory is not None
        pipe = self.redis.pipeline(transaction=False)
        for r in reads:
            pipe.get(r.keys.history)
        blobs = await self.io(pipe)
        histories = [self.history(b) for b in blobs]
        jobs = [
            memory_store.refold_job(model.memory, h, r.state.history_seq)
            for r, h in zip(reads, histories, strict=True)
            if r.state
        ]
        assert len(jobs) == len(reads)  # only users with a state reach a rebuild
        folded = await asyncio.to_thread(memory_store.run_folds, model, jobs)
        pipe = self.writes()
        for r, history, (record, tokens) in zip(reads, histories, folded, strict=True):
            if not history:  # a lost `hist`: serve without history tokens rather than fail
                continue
            r.tokens = tokens
            self._set_derived(pipe, r.keys, r.head, r.keys.memory(model.version), encode_memory(record))
            self._set_derived(pipe, r.keys, r.head, r.keys.tokens(model.version), encode_tokens(tokens))
        await self.io(pipe)

    def _set_derived(self, pipe: object, keys: UserKeys, head: bytes, key: str, value: bytes) -> None:
        pipe.eval(SET_DERIVED, 2, keys.state, key, head, value, self.derived_ttl_s)  # type: ignore[attr-defined]

    async def write_derived(
        self,
        model: ModelView,
        queries: Sequence[tuple[UserRead, Query]] = (),
        answers: Sequence[tuple[UserRead, str, bytes]] = (),
        reads: Sequence[UserRead] = (),
    ) -> None:
        """In one round trip: the folds ``reads`` computed (each only if its user's state has not
        moved), then freshly computed query states (each only if its user's state is the one it was
        computed from) and rendered answers (stamped with the state's sequence number, by request
        shape; each only if the state has not moved and no event waits in the log). A fold that is
        not written takes its derived values with it: they name the state it would have written."""
        answers = answers if self.answers_ttl_s else ()
        folds = list({id(r.fold): r.fold for r in reads if r.fold is not None}.values())  # a user asked twice
        if not folds and not queries and not answers:
            return
        pipe = self.writes()
        for f in folds:
            store_fold.queue_fold(self, pipe, model, f)
        for r, q in queries:
            self._set_derived(pipe, r.keys, r.head, r.keys.query(model.version), encode_query(q))
        for r, shape, body in answers:
            assert r.state is not None
            stamped = encode_answer(model.version, r.state.next_seq, body)
            pipe.eval(
                SET_ANSWER,
                3,
                r.keys.state,
                r.keys.log,
                r.keys.answers(model.version),
                r.head,
                shape,
                stamped,
                self.answers_ttl_s,
            )
        await self.io(pipe)

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
        """Read users by their keys (their ids are not needed): stale tokens get rebuilt. Logged
        events are left to the next fold, which keeps the tokens of the buckets it does not touch."""
        reads = [UserRead("", k, None) for k in keys]
        pipe = self.redis.pipeline(transaction=False)
        for r in reads:
            pipe.get(r.keys.state)
            pipe.get(r.keys.tokens(model.version))
        replies = await self.io(pipe)
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
                and not fresh(self.decoded(tok, decode_tokens, "tokens"), model, r.state)
            ):
                stale.append(r)
        if stale:
            await self._rebuild_tokens(model, stale)
        return len(reads)

    async def inspect(self, model: ModelView, user_id: str) -> Inspected | None:
        """Everything stored for one user, as ``model`` sees it (None: unknown user), its logged
        events folded first."""
        (folded,) = await self.fold(model, [user_id])
        if folded.error is not None:
            raise folded.error
        k = self.keys(user_id)
        named = {
            "state": k.state,
            "log": k.log,
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
        blob, tok, q, *usage = await self.io(pipe)
        if not blob or isinstance(blob, Exception):
            if isinstance(blob, Exception):
                raise StoreUnavailable("redis refused a read")
            return None
        state = self.usable_state(model, user_id, blob)
        tokens = self.decoded(tok, decode_tokens, "tokens")
        query = self.decoded(q, decode_query, "query")
        sizes = {name: int(n) for name, n in zip(named, usage, strict=True) if isinstance(n, int)}
        return Inspected(
            state,
            tokens if fresh(tokens, model, state) else None,
            query is not None and query.next_seq == state.next_seq,
            sizes,
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
