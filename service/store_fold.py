"""Folding: a user's logged events applied to their state, the store's compaction step.

/events only appends accepted events to each user's log (service.store), so acknowledging an event
costs one script and no decoding. A fold reads the state, its derived records and the log in one
round trip; applies the log's events with the shared rule off the event loop
(service.user_state.apply_events); recomputes the tokens of the buckets they touched (one
history-graph call for every user of the round; for the memory compressor, the segments that fill);
and writes with one compare-and-set script per user, all in one MULTI/EXEC on a single node: the
state, the tokens, and the log without the records it applied (events appended since the read stay
in it). A user whose state moved meanwhile (another fold, in another process or replica) is read and
folded again (jittered backoff); folds of one user from one process wait for each other first.

Who folds: an append, for the users whose log reached ``fold_after`` events; a read, for every user
it finds with a log, so a read reflects every acknowledged event; GET /users; ``Store.fold``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from service import memory_store
from service.errors import StoreConflict, StoreUnavailable, UserStateCorrupt
from service.redis_scripts import FOLD
from service.store_codec import (
    EVENT,
    CorruptValue,
    Logged,
    MemoryRecord,
    State,
    Tokens,
    UserKeys,
    decode_log,
    decode_memory,
    decode_tokens,
    encode_events,
    encode_memory,
    encode_state,
    encode_tokens,
    state_head,
)
from service.store_io import StoreIO
from service.user_state import Appended, ModelView, TokenJob, apply_events, build_tokens, fresh, token_job

FOLD_CHUNK = 32  # users per fold round trip
# Chunks of one fold in flight at once: two let one chunk's computation (a worker thread) overlap the
# other's Redis round trips; more would queue every chunk's decoding on the event loop at once and
# stall other requests (/healthz) behind them.
FOLD_LANES = 2


@dataclass
class PendingFold:
    """One user's fold in flight: what was read, what was computed, what the fold script writes."""

    keys: UserKeys
    state: State | None = None
    tokens: Tokens | None = None  # as read: fresh or not
    memory: MemoryRecord | None = None
    head: bytes = b""
    log_bytes: int = 0
    events: list[Logged] = field(default_factory=list)
    result: Appended | None = None
    new_tokens: Tokens | None = None
    new_memory: MemoryRecord | None = None
    history_op: bytes = b""
    blob: bytes = b""  # the new state, encoded


@dataclass
class Folded:
    """A user after a fold: the state (None: unknown user), its tokens if fresh for the model, the
    state's head (for compare-and-set writes of derived values), or the error that kept this user
    from being folded (the others are unaffected). ``pending``: a fold computed but not written
    (``fold(write=False)``): ``queue_fold`` writes it."""

    state: State | None
    tokens: Tokens | None = None
    head: bytes = b""
    error: Exception | None = None
    pending: PendingFold | None = None


Read = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
"""A user's stored (state, tok:<version>, mem:<version>, log), as one round trip read them."""


async def fold(
    io: StoreIO,
    model: ModelView,
    user_ids: list[str],
    read: dict[str, Read] | None = None,
    write: bool = True,
) -> dict[str, Folded]:
    """Fold every user's log into their state (a user with an empty log is returned as stored).
    ``read``: what a caller's own round trip just read for these users, used instead of a first
    read of its own (the compare-and-set catches anything that moved since). ``write`` False:
    compute the folds and leave writing them to the caller (``queue_fold``, with its own writes in
    the same round trip); nothing is retried then: a fold that meets a moved state is not written,
    and the events it applied stay logged for the next one."""
    users = list(dict.fromkeys(user_ids))
    chunks = [users[i : i + FOLD_CHUNK] for i in range(0, len(users), FOLD_CHUNK)]
    lanes = asyncio.Semaphore(FOLD_LANES)

    async def lane(chunk: list[str]) -> dict[str, Folded]:
        async with lanes:
            return await _fold_chunk(io, model, chunk, read, write)

    async with io.user_locks.hold(sorted(users)):
        # Every chunk finishes before an error of one is raised: none runs on behind the answer.
        done = await asyncio.gather(*(lane(c) for c in chunks), return_exceptions=True)
    failed = [d for d in done if isinstance(d, BaseException)]
    if failed:
        raise failed[0]
    return {u: f for chunk in done for u, f in chunk.items()}  # type: ignore[union-attr]


async def _fold_chunk(
    io: StoreIO, model: ModelView, users: list[str], read: dict[str, Read] | None, write: bool
) -> dict[str, Folded]:
    out: dict[str, Folded] = {}
    todo = users
    for attempt in range(io.max_retries):
        todo = await _fold_round(io, model, todo, out, read if attempt == 0 else None, write)
        if not todo:
            return out
        io.counters.conflicts += len(todo)
        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
    for user in todo:
        out[user] = Folded(None, error=StoreConflict(f"gave up after {io.max_retries} concurrent folds"))
    return out


def queue_read(pipe: Any, keys: UserKeys, model: ModelView) -> None:
    """Queue the GETs of what a fold of this user needs; ``take_read`` takes their replies."""
    # Only the keys this model has: commands, not bytes, are what a pipeline costs this process.
    # (No MGET: redis-py refuses it in a cluster pipeline although a user's keys share one slot.)
    pipe.get(keys.state)
    pipe.get(keys.tokens(model.version))
    if model.memory is not None:
        pipe.get(keys.memory(model.version))
    pipe.get(keys.log)


def take_read(replies: Iterator[Any], model: ModelView) -> Read:
    """The replies ``queue_read`` queued for one user, in order."""
    blob, tok = next(replies), next(replies)
    return blob, tok, next(replies) if model.memory is not None else None, next(replies)


async def _read(io: StoreIO, model: ModelView, users: list[str]) -> dict[str, Read]:
    pipe = io.redis.pipeline(transaction=False)
    for user in users:
        queue_read(pipe, io.keys(user), model)
    replies = iter(await io.io(pipe))
    return {user: take_read(replies, model) for user in users}


async def _fold_round(
    io: StoreIO,
    model: ModelView,
    users: list[str],
    out: dict[str, Folded],
    read: dict[str, Read] | None,
    write: bool,
) -> list[str]:
    """Read (unless ``read`` has every user), fold and compare-and-set every user once (``write``);
    returns those whose state moved meanwhile."""
    if read is None or any(u not in read for u in users):
        read = await _read(io, model, users)
    ready: list[tuple[str, PendingFold]] = []
    for user in users:
        blob, tok, mem, log = read[user]
        if any(isinstance(x, Exception) for x in (blob, tok, mem, log)):
            out[user] = Folded(None, error=StoreUnavailable("redis refused a read"))
            continue
        f = PendingFold(io.keys(user), head=state_head(blob))
        try:
            f.state = io.usable_state(model, user, blob) if blob else None
            f.events = decode_log(log) if log else []
        except UserStateCorrupt as exc:
            out[user] = Folded(None, error=exc)
            continue
        except CorruptValue as exc:
            io.counters.corrupt_states += 1
            out[user] = Folded(None, error=UserStateCorrupt(f"event log of user {user!r} is unusable: {exc}"))
            continue
        f.tokens = io.decoded(tok, decode_tokens, "tokens")
        f.memory = io.decoded(mem, decode_memory, "memory")
        if not f.events:  # nothing to fold: the user as stored
            kept = f.tokens if f.state is not None and fresh(f.tokens, model, f.state) else None
            out[user] = Folded(f.state, kept, f.head)
            continue
        f.log_bytes = len(log or b"")
        ready.append((user, f))
    if not ready:
        return []
    await asyncio.to_thread(_compute, io, model, [f for _, f in ready])
    if model.memory is not None:
        await _fold_histories(io, model, [f for _, f in ready])
    for _, f in ready:
        assert f.result is not None
        f.blob = encode_state(f.result.state)
    if not write:
        for user, f in ready:
            out[user] = _folded(model, f, pending=f)
        return []
    pipe = io.writes()
    for _, f in ready:
        queue_fold(io, pipe, model, f)
    results = await io.io(pipe)
    conflicts = []
    for (user, f), ok in zip(ready, results, strict=True):
        if isinstance(ok, Exception):
            out[user] = Folded(None, error=StoreUnavailable(f"redis refused a fold: {type(ok).__name__}"))
        elif ok == 1:
            out[user] = _folded(model, f)
        else:
            conflicts.append(user)
    return conflicts


def _folded(model: ModelView, f: PendingFold, pending: PendingFold | None = None) -> Folded:
    assert f.result is not None
    return Folded(f.result.state, _tokens_after(model, f), state_head(f.blob), pending=pending)


def _tokens_after(model: ModelView, f: PendingFold) -> Tokens | None:
    """The user's tokens once the fold is written: the new ones, or the stored ones if the fold left
    them fresh (it touched no bucket)."""
    assert f.result is not None
    if f.new_tokens is not None:
        return f.new_tokens
    return f.tokens if fresh(f.tokens, model, f.result.state) else None


def _compute(io: StoreIO, model: ModelView, folding: list[PendingFold]) -> None:
    """Off the event loop: the rule for every user, then one history-graph call for all the buckets
    that changed. Tokens left None are still fresh in Redis and are not rewritten."""
    jobs: list[TokenJob] = []
    owners: list[PendingFold] = []
    for f in folding:
        was_fresh = f.state is not None and fresh(f.tokens, model, f.state)
        f.result = apply_events(f.state, f.events, model, io.max_buckets)
        f.new_tokens, f.history_op = None, b""
        if model.memory is not None:
            memory_fresh = was_fresh and f.state is not None and fresh(f.memory, model, f.state)
            f.new_memory = f.memory if memory_fresh else None
            f.new_tokens = f.tokens if f.new_memory is not None else None
            continue
        new = f.result.state
        if model.num_buckets and new.history_seq and (f.result.touched or not was_fresh):
            jobs.append(token_job(new, f.tokens if was_fresh else None, f.result.touched, model))
            owners.append(f)
    for f, built in zip(owners, build_tokens(model, jobs) if jobs else [], strict=True):
        f.new_tokens = built


async def _fold_histories(io: StoreIO, model: ModelView, folding: list[PendingFold]) -> None:
    """Memory compressor: extend each memory by the events that joined the history, or refold the
    whole history (a new model, a lost record, or a late event inside folded segments)."""
    assert model.memory is not None
    refold = [f for f in folding if f.result and memory_store.needs_refold(f.new_memory, f.result)]
    pipe = io.redis.pipeline(transaction=False)
    for f in refold:
        pipe.get(f.keys.history)
    blobs = await io.io(pipe) if refold else []
    histories = {id(f): io.history(b) for f, b in zip(refold, blobs, strict=True)}
    jobs, owners = [], []
    for f in folding:
        assert f.result is not None
        new_events = sorted(f.result.evicted, key=lambda e: e.key)
        if id(f) in histories:
            history = sorted(histories[id(f)] + new_events, key=lambda e: e.key)
            history = memory_store.bounded(history, model.memory.segment_len, io.max_history)
            f.history_op = b"s" + encode_events(history)
            f.result.state.history_len = len(history)
            if history:
                jobs.append(memory_store.refold_job(model.memory, history, f.result.state.history_seq))
                owners.append(f)
        elif new_events:
            # Appending past the bound also drops the oldest whole segments, in the same script:
            # the memory already holds them, and only a refold would read them again.
            drop = memory_store.overflow(f.result.state.history_len, model.memory.segment_len, io.max_history)
            f.history_op = (b"t%d:" % (drop * EVENT.itemsize) if drop else b"a") + encode_events(new_events)
            f.result.state.history_len -= drop
            jobs.append(
                memory_store.extend_job(
                    model.memory, f.new_memory, f.new_tokens, new_events, f.result.state.history_seq
                )
            )
            owners.append(f)
    folded = await asyncio.to_thread(memory_store.run_folds, model, jobs)
    for f, (record, tokens) in zip(owners, folded, strict=True):
        f.new_memory, f.new_tokens = record, tokens


def queue_fold(io: StoreIO, pipe: object, model: ModelView, f: PendingFold) -> None:
    """Queue the user's compare-and-set fold script."""
    pipe.eval(  # type: ignore[attr-defined]
        FOLD,
        5,
        f.keys.state,
        f.keys.log,
        f.keys.tokens(model.version),
        f.keys.history,
        f.keys.memory(model.version),
        f.head,
        f.blob,
        encode_tokens(f.new_tokens) if f.new_tokens is not None else b"",
        f.history_op,
        encode_memory(f.new_memory) if f.new_memory is not None and model.memory is not None else b"",
        io.user_ttl_s,
        io.derived_ttl_s,
        f.log_bytes,
    )
