"""The store's side of the memory compressor (Rec2PM, model/memory.py): fold segments as they fill.

Per user, next to the recent window (service.store), for a memory bundle:
    hist   the whole raw history in key order: the truth a new model (or an out-of-order event)
           refolds from; appended to, never rewritten, on the normal path
    mem    M_k after the full segments (model.segments) + the open segment, stamped with the model
           version and the history seq, like the tokens
    tok    the C history tokens: fold(M_k, open segment), or M_k when no segment is open
An eviction from the recent window appends its event to the open segment; each segment that fills
is folded once into M_k (in the same optimistic transaction as the append, so concurrent events
are kept: a conflicting write retries the whole step). The tokens are refolded on every history
change, so each costs one full-segment fold per S events plus one open-segment fold.

Folds of many users run as one ONNX call per round: round r folds every user's r-th new segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.bucketing import Event
from model.segments import cut_segments, segment_arrays
from service.store_codec import MemoryRecord, Tokens

FoldFn = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]

EXCLUDE_ITEMS = 256
"""History items kept with the tokens for ``exclude_seen`` (newest distinct first): the same
budget as V x G = 8 x 32 bucket items, so both compressors exclude alike."""


@dataclass(frozen=True)
class MemoryView:
    """What the store needs from a memory bundle."""

    segment_len: int  # S
    initial: np.ndarray  # (C, D) float32: M_0
    fold: FoldFn  # memory (n, C, D), segment arrays (n, S) per SEGMENT_KEYS -> (n, C, D)


@dataclass
class FoldJob:
    """One user's work: from ``memory`` (after ``folded`` events), fold ``segments`` then ``open``."""

    history_seq: int
    memory: np.ndarray
    folded: int
    segments: list[list[Event]]
    open_events: list[Event]
    last_key: tuple[int, int]
    exclude: list[int]  # newest distinct history items, at most EXCLUDE_ITEMS


def newest_distinct(new_events: list[Event], older: list[int]) -> list[int]:
    """Exclusion list after ``new_events`` (key order) join a history whose list was ``older``."""
    seen = dict.fromkeys([e.item for e in reversed(new_events)] + older)
    return list(seen)[:EXCLUDE_ITEMS]


def refold_job(view: MemoryView, history: list[Event], history_seq: int) -> FoldJob:
    """Fold a whole history from M_0: a new model, or an event older than the folded history."""
    segments, open_events = cut_segments(history, view.segment_len)
    return FoldJob(
        history_seq,
        view.initial,
        0,
        segments,
        open_events,
        history[-1].key,
        newest_distinct(history, []),
    )


def extend_job(
    view: MemoryView, old: MemoryRecord, exclude: list[int], new_events: list[Event], history_seq: int
) -> FoldJob:
    """``new_events`` (at least one, key order) all newer than the folded history: only the open
    segment and what follows it move."""
    segments, open_events = cut_segments(old.open_events + new_events, view.segment_len)
    return FoldJob(
        history_seq,
        old.memory,
        old.folded,
        segments,
        open_events,
        new_events[-1].key,
        newest_distinct(new_events, exclude),
    )


def run_folds(view: MemoryView, version: str, jobs: list[FoldJob]) -> list[tuple[MemoryRecord, Tokens]]:
    """Every job's new memory record and tokens, with one fold call per round for all jobs."""
    if not jobs:
        return []
    s = view.segment_len
    memory = np.stack([j.memory for j in jobs]).astype(np.float32)
    for r in range(max(len(j.segments) for j in jobs)):
        rows = [i for i, j in enumerate(jobs) if len(j.segments) > r]
        arrays = segment_arrays([jobs[i].segments[r] for i in rows], s)
        memory[rows] = view.fold(memory[rows], arrays)
    tokens = memory.copy()
    rows = [i for i, j in enumerate(jobs) if j.open_events]
    if rows:
        tokens[rows] = view.fold(memory[rows], segment_arrays([jobs[i].open_events for i in rows], s))
    out = []
    c = view.initial.shape[0]
    width = -(-EXCLUDE_ITEMS // c)
    for i, j in enumerate(jobs):
        items = np.zeros(c * width, np.int32)
        items[: len(j.exclude)] = j.exclude
        record = MemoryRecord(
            version, j.history_seq, j.folded + s * len(j.segments), j.last_key, memory[i], j.open_events
        )
        # Every slot summarises the whole history: one category-less row each, stamped with its newest event.
        newest = np.tile(np.array(j.last_key, np.int64), (c, 1))
        cats = np.zeros(c, np.int32)
        out.append((record, Tokens(version, j.history_seq, cats, newest, items.reshape(c, width), tokens[i])))
    return out
