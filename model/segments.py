"""The memory compressor's segment rule (Rec2PM, model/memory.py): the one definition, shared by
training (model.samples) and the Redis store (service.memory_store). No torch.

The history (every event outside the recent window, in key order, as model.bucketing defines it)
is cut into segments of S events counted from the user's first event, so a full segment never
changes again and is folded into the memory once; the last segment may be open (fewer than S).
Because cuts fall on multiples of S from the start, cutting ``open_segment + newer_events`` gives
the same segments as cutting the whole history again: that is what makes folding incremental.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from model.bucketing import Event

T = TypeVar("T")
SEGMENT_KEYS = ("seg_items", "seg_actions", "seg_ts", "seg_mask")  # the fold's per-segment inputs


def cut_segments(history: Sequence[T], segment_len: int) -> tuple[list[list[T]], list[T]]:
    """(full segments oldest first, open segment) of a history that starts on a segment boundary."""
    full = len(history) - len(history) % segment_len
    segments = [list(history[i : i + segment_len]) for i in range(0, full, segment_len)]
    return segments, list(history[full:])


def segment_arrays(segments: Sequence[Sequence[Event]], segment_len: int) -> dict[str, np.ndarray]:
    """(K, S) arrays per SEGMENT_KEYS, each segment right-padded (mask False): what fold reads."""
    k = len(segments)
    out = {
        "seg_items": np.zeros((k, segment_len), np.int64),
        "seg_actions": np.zeros((k, segment_len), np.int64),
        "seg_ts": np.zeros((k, segment_len), np.int64),
        "seg_mask": np.zeros((k, segment_len), bool),
    }
    for j, segment in enumerate(segments):
        n = len(segment)
        out["seg_items"][j, :n] = [e.item for e in segment]
        out["seg_actions"][j, :n] = [e.action for e in segment]
        out["seg_ts"][j, :n] = [e.ts for e in segment]
        out["seg_mask"][j, :n] = True
    return out
