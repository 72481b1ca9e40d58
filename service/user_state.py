"""What a batch of events does to one user's state, and which derived state must be recomputed: the
store's functional core. No I/O: service.store reads, calls these, and writes.

Everything here is in store ids (service.ids) except where the model is called: bucket tokens and
ranking inputs are converted to the served bundle's internal ids at that boundary only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.bucketing import CategoriesOf, CategoryOrder, Event, UserState
from service.ids import StoreIds
from service.memory_store import MemoryView
from service.store_codec import (
    KIND_BUCKETS,
    KIND_MEMORY,
    Logged,
    MemoryRecord,
    State,
    Tokens,
    bucket_items,
    state_layout,
)

TokenFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ModelView:
    """What the store needs from the served bundle."""

    version: str
    recent_len: int  # L
    num_buckets: int  # history tokens: V buckets or C memory slots (0: the model uses none)
    bucket_size: int  # G (0 for the memory compressor: it keeps the raw history instead)
    d_model: int
    ids: StoreIds
    categories_of: CategoriesOf  # store item id -> store category ids, as the bundle categorises it
    category_order: CategoryOrder  # store category id -> the bundle's id: ties rank as in training
    bucket_tokens: TokenFn  # internal items (n, G), internal categories (n,) -> (n, D) tokens
    memory: MemoryView | None = None  # set for a memory-compressor bundle

    @property
    def kind(self) -> int:
        return KIND_MEMORY if self.memory is not None else KIND_BUCKETS

    @property
    def layout(self) -> bytes:
        """The header bytes of the states this model reads (store_codec.state_layout)."""
        return state_layout(self.kind, self.recent_len, self.bucket_size)


@dataclass(frozen=True)
class NewEvent:
    user_id: str
    item: int  # store id
    action: int  # store id
    ts: int
    event_id: str | None = None


@dataclass
class Appended:
    """One user's fold, computed: the new state and what changed."""

    state: State
    evicted: list[Event] = field(default_factory=list)  # events that joined the history, in order
    touched: set[int] = field(default_factory=set)  # categories whose bucket content changed


class LayoutMismatch(ValueError):
    """The stored state was written for another layout (L, G or compressor) than the model's."""


def empty_state(model: ModelView) -> State:
    return State(model.kind, model.recent_len, model.bucket_size)


def check_layout(state: State, model: ModelView) -> None:
    if (state.kind, state.recent_len, state.bucket_size) != (model.kind, model.recent_len, model.bucket_size):
        raise LayoutMismatch(
            f"stored state has L={state.recent_len}, G={state.bucket_size} (kind {state.kind}); the model "
            f"needs L={model.recent_len}, G={model.bucket_size} (kind {model.kind})"
        )


def fresh(record: Tokens | MemoryRecord | None, model: ModelView, state: State) -> bool:
    """The one rule for using derived state: same model version and same history state."""
    return record is not None and (record.version, record.history_seq) == (model.version, state.history_seq)


def apply_events(
    state: State | None, events: Sequence[Logged], model: ModelView, max_buckets: int | None
) -> Appended:
    """Fold accepted ``events`` (the log's, oldest first) into ``state`` with the shared rule
    (model.bucketing, incremental form). Each gets the next seq in log order, so ties in time keep
    arrival order. Events leave the recent window in key order; for a bucket state they join their
    buckets (at most ``max_buckets`` kept), for a memory state they are appended to the history."""
    state = state or empty_state(model)
    rule = UserState(
        model.recent_len,
        model.bucket_size,
        max_buckets,
        model.category_order,
        list(state.recent),
        state.buckets,
    )
    out = Appended(state)
    for seq, (ts, item, action) in enumerate(events, start=state.next_seq):
        evicted = rule.push_recent(Event(ts, seq, item, action))
        if evicted is None:
            continue
        out.evicted.append(evicted)
        if model.memory is None:
            out.touched |= rule.add_to_history(evicted, model.categories_of)
    next_seq = state.next_seq + len(events)
    changed = bool(out.touched) if model.memory is None else bool(out.evicted)
    out.state = State(
        state.kind,
        state.recent_len,
        state.bucket_size,
        next_seq,
        next_seq if changed else state.history_seq,
        state.history_len + (len(out.evicted) if model.memory is not None else 0),
        rule.recent,
        rule.buckets,
    )
    return out


def ranked_categories(state: State, model: ModelView) -> list[int]:
    """Every bucket's category of a bucket state, most recently active first, as the rule ranks them
    for this bundle. Ranking reads only each bucket's newest entry, so stored buckets stay undecoded."""
    rule = UserState(model.recent_len, model.bucket_size, order=model.category_order, buckets=state.buckets)
    return rule.ranked_categories()


def top_categories(state: State, model: ModelView) -> list[int]:
    """The categories of the V history buckets."""
    return ranked_categories(state, model)[: model.num_buckets]


@dataclass
class TokenJob:
    """One user's history tokens to build: the new top V, reusing what is still valid."""

    history_seq: int
    categories: list[int]  # the V history buckets, most recently active first
    newest: list[tuple[int, int]]  # (ts, seq) of each one's newest item
    reuse: dict[int, np.ndarray]  # category -> token still valid (untouched, same model)
    items: dict[int, np.ndarray]  # category -> items (newest first) of a bucket whose token must be computed


def token_job(state: State, old: Tokens | None, touched: set[int], model: ModelView) -> TokenJob:
    """Tokens of ``state``'s top V. With ``old`` (fresh before this change, same model), only the
    touched buckets are recomputed: the others' content did not change."""
    reuse = (
        {}
        if old is None
        else {int(c): t for c, t in zip(old.categories, old.tokens, strict=True) if int(c) not in touched}
    )
    cats = top_categories(state, model)
    return TokenJob(
        state.history_seq,
        cats,
        [state.buckets[c][-1][0] for c in cats],
        reuse,
        {c: bucket_items(state.buckets[c])[::-1] for c in cats if c not in reuse},  # newest first
    )


def build_tokens(model: ModelView, jobs: list[TokenJob]) -> list[Tokens]:
    """Every job's tokens with one call of the bundle's history graph for all buckets to compute."""
    need = [(c, job.items[c]) for job in jobs for c in job.categories if c not in job.reuse]
    computed = np.zeros((0, model.d_model), np.float32)
    if need:
        items = np.zeros((len(need), model.bucket_size), np.int64)
        for row, (_, bucket) in enumerate(need):
            items[row, : len(bucket)] = bucket
        # Model ids; what this bundle does not know (negative placeholders) is padding / no category.
        internal_items = np.maximum(model.ids.items.internal(items.ravel()).reshape(items.shape), 0)
        cats = np.maximum(model.ids.categories.internal(np.array([c for c, _ in need])), 0)
        computed = model.bucket_tokens(internal_items, cats)
    out, cursor = [], 0
    for job in jobs:
        rows = []
        for c in job.categories:
            if c in job.reuse:
                rows.append(job.reuse[c])
            else:
                rows.append(computed[cursor])
                cursor += 1
        out.append(
            Tokens(
                model.version,
                job.history_seq,
                np.array(job.categories, np.int64),
                np.array(job.newest, np.int64).reshape(-1, 2),
                np.stack(rows).astype(np.float32) if rows else np.zeros((0, model.d_model), np.float32),
            )
        )
    return out


def seen_items(state: State, tokens: Tokens | None, model: ModelView) -> np.ndarray:
    """Store ids ``exclude_seen`` removes: the recent window's items and the items of the history
    tokens the model reads (the V buckets' G newest items; for the memory compressor the newest
    distinct history items kept with the tokens). Older history the model no longer sees is not
    excluded."""
    parts = [np.array([e.item for e in state.recent], np.int64)]
    if model.memory is None:
        parts += [bucket_items(state.buckets[c]) for c in top_categories(state, model)]
    elif tokens is not None:
        parts.append(np.asarray(tokens.exclude, np.int64))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
