"""The store's side of the memory compressor (Rec2PM, model/memory.py): fold segments as they fill.
Pure: service.store reads and writes, these functions decide and compute.

Per user, next to the state (whose recent window works as for buckets), for a memory bundle:
    hist            the raw history in key order (store ids): the truth a new model, or an event
                    older than the folded history, refolds from; appended to on the normal path,
                    and kept to the newest ``max_history`` events (whole segments) on every path
    mem:<version>   M_k after the full segments (model.segments) + the open segment, stamped with
                    the history seq, like the tokens
    tok:<version>   the C history tokens: fold(M_k, open segment), or M_k when no segment is open,
                    plus the newest distinct history items for exclude_seen
An event leaving the recent window joins the open segment; each segment that fills is folded once
into M_k, inside the same compare-and-set append as the event, so concurrent events are kept.

Folds of many users run as one ONNX call per round: round r folds every user's r-th new segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.bucketing import Event
from model.segments import cut_segments, segment_arrays
from service.store_codec import MemoryRecord, Tokens

if TYPE_CHECKING:
    from service.user_state import Appended, ModelView

FoldFn = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]

EXCLUDE_ITEMS = 256
"""History items kept with the tokens for ``exclude_seen`` (newest distinct first): the same
budget as V x G = 8 x 32 bucket items, so both compressors exclude alike."""


@dataclass(frozen=True)
class MemoryView:
    """What the store needs from a memory bundle."""

    segment_len: int  # S
    initial: np.ndarray  # (C, D) float32: M_0
    fold: FoldFn  # memory (n, C, D), segment arrays (n, S) per SEGMENT_KEYS (model ids) -> (n, C, D)


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


def needs_refold(memory: MemoryRecord | None, appended: Appended) -> bool:
    """Whether the memory cannot be extended by this append: the history existed before it but its
    folded record is missing or stale (None), or an event joined it older than the newest history
    event (it belongs inside an already folded segment)."""
    before = appended.state.history_len - len(appended.evicted)
    if before == 0:
        return False
    return memory is None or any(e.key < memory.last_key for e in appended.evicted)


def overflow(history_len: int, segment_len: int, max_history: int | None) -> int:
    """How many of the oldest events a history of ``history_len`` drops to keep at most
    ``max_history``: whole segments, so segment boundaries stay where the memory's were."""
    if max_history is None or history_len <= max_history:
        return 0
    drop = history_len - max_history
    return min(drop + -drop % segment_len, history_len)


def bounded(history: list[Event], segment_len: int, max_history: int | None) -> list[Event]:
    """The history without its ``overflow``: a refold then starts from there."""
    return history[overflow(len(history), segment_len, max_history) :]


def refold_job(view: MemoryView, history: list[Event], history_seq: int) -> FoldJob:
    """Fold a whole history from M_0."""
    segments, open_events = cut_segments(history, view.segment_len)
    last = history[-1].key if history else (0, 0)
    return FoldJob(history_seq, view.initial, 0, segments, open_events, last, newest_distinct(history, []))


def extend_job(
    view: MemoryView,
    old: MemoryRecord | None,
    old_tokens: Tokens | None,
    new_events: list[Event],
    history_seq: int,
) -> FoldJob:
    """``new_events`` (at least one, key order) all newer than the folded history (``old``, or M_0
    for a user's first history events): only the open segment and what follows it move."""
    if old is None:
        old = MemoryRecord("", 0, 0, (0, 0), view.initial, [])
    exclude = [] if old_tokens is None else [int(i) for i in old_tokens.exclude]
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


def _model_segments(model: ModelView, segments: list[list[Event]], segment_len: int) -> dict[str, np.ndarray]:
    """Segment arrays in the bundle's ids; items it does not know become padding ids."""
    arrays = segment_arrays(segments, segment_len)
    for key, numbering in (("seg_items", model.ids.items), ("seg_actions", model.ids.actions)):
        flat = arrays[key].ravel()
        mapped = np.where(flat > 0, np.maximum(numbering.internal(flat), 0), 0)
        arrays[key] = mapped.reshape(arrays[key].shape)
    return arrays


def run_folds(model: ModelView, jobs: list[FoldJob]) -> list[tuple[MemoryRecord, Tokens]]:
    """Every job's new memory record and tokens, with one fold call per round for all jobs."""
    if not jobs:
        return []
    view = model.memory
    assert view is not None
    s = view.segment_len
    memory = np.stack([j.memory for j in jobs]).astype(np.float32)
    for r in range(max(len(j.segments) for j in jobs)):
        rows = [i for i, j in enumerate(jobs) if len(j.segments) > r]
        memory[rows] = view.fold(memory[rows], _model_segments(model, [jobs[i].segments[r] for i in rows], s))
    tokens = memory.copy()
    rows = [i for i, j in enumerate(jobs) if j.open_events]
    if rows:
        tokens[rows] = view.fold(memory[rows], _model_segments(model, [jobs[i].open_events for i in rows], s))
    out = []
    c = view.initial.shape[0]
    for i, j in enumerate(jobs):
        record = MemoryRecord(
            model.version, j.history_seq, j.folded + s * len(j.segments), j.last_key, memory[i], j.open_events
        )
        # Every slot summarises the whole history: no category, stamped with its newest event.
        newest = np.tile(np.array(j.last_key, np.int64), (c, 1))
        exclude = np.array(j.exclude, np.uint32)
        out.append(
            (record, Tokens(model.version, j.history_seq, np.zeros(c, np.int64), newest, tokens[i], exclude))
        )
    return out
