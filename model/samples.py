"""Turn (user, cut point) pairs into padded model inputs, applying the shared bucketing rule.

A sample ``(row, end)`` means: the input is the user's events before absolute index ``end``; in
training the target of the last position is the event at ``end``. ``tile`` cuts a user's training
events into such windows so that every event is a target exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.bucketing import Bucket, Event, UserState, bucketize, split_recent
from model.config import ModelConfig
from model.data import Dataset
from model.segments import SEGMENT_KEYS, cut_segments, segment_arrays
from model.user_hash import user_hash_bucket


def pad_recent(recent: list[Event], length: int) -> dict[str, np.ndarray]:
    """Left-pad a recent window (oldest first) to ``length``: the newest event is always last."""
    out = {
        "items": np.zeros(length, np.int64),
        "actions": np.zeros(length, np.int64),
        "ts": np.zeros(length, np.int64),
        "mask": np.zeros(length, bool),
    }
    n = len(recent)
    if n:
        out["items"][-n:] = [e.item for e in recent]
        out["actions"][-n:] = [e.action for e in recent]
        out["ts"][-n:] = [e.ts for e in recent]
        out["mask"][-n:] = True
    return out


def pad_buckets(buckets: list[Bucket], num_buckets: int, bucket_size: int) -> dict[str, np.ndarray]:
    out = {
        "bucket_items": np.zeros((num_buckets, bucket_size), np.int64),
        "bucket_cats": np.zeros(num_buckets, np.int64),
        "bucket_mask": np.zeros(num_buckets, bool),
        "bucket_ts": np.zeros(num_buckets, np.int64),
    }
    for j, b in enumerate(buckets):
        out["bucket_items"][j, : len(b.items)] = b.items
        out["bucket_cats"][j] = b.category
        out["bucket_mask"][j] = True
        out["bucket_ts"][j] = b.newest[0]
    return out


def pad_segments(history: list[Event], segment_len: int) -> dict[str, np.ndarray]:
    """The history cut into segments (model.segments), the open last one included: (K, S) arrays,
    K = 0 for an empty history."""
    full, open_segment = cut_segments(history, segment_len)
    return segment_arrays(full + ([open_segment] if open_segment else []), segment_len)


def stack(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-sample arrays; segment arrays are padded with empty segments to the longest."""
    out = {}
    for key in samples[0]:
        arrays = [s[key] for s in samples]
        if key in SEGMENT_KEYS:
            k = max(max(len(a) for a in arrays), 1)
            arrays = [np.concatenate([a, np.zeros((k - len(a), *a.shape[1:]), a.dtype)]) for a in arrays]
        out[key] = np.stack(arrays)
    return out


RECENT_KEYS = ("items", "actions", "ts", "mask", "target_next", "action_target")  # (B, L), left-padded


@dataclass
class SampleBuilder:
    dataset: Dataset
    cfg: ModelConfig

    def __post_init__(self) -> None:
        self._events = [self.dataset.user_events(r) for r in range(self.dataset.num_users)]
        self._hash = np.array(
            [
                user_hash_bucket(self.dataset.users.external(r + 1), self.cfg.user_hash_buckets)
                for r in range(self.dataset.num_users)
            ],
            np.int64,
        )
        self._buckets: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def prepare(self, rows: np.ndarray, ends: np.ndarray) -> None:
        """Compute the bucket arrays of many samples at once (CAUSE mode), replacing the previous
        ones: one pass over each user's events with the incremental form of the rule, instead of
        bucketing each sample's whole history again (3 s of a 10 s epoch on ML-100K)."""
        self._buckets = {}
        if self.cfg.mode != "cause" or self.cfg.uses_memory:
            return
        wanted: dict[int, set[int]] = {}
        for row, end in zip(rows.tolist(), ends.tolist(), strict=True):
            wanted.setdefault(row, set()).add(end)
        for row, user_ends in wanted.items():
            events, start = self._events[row], int(self.dataset.user_offsets[row])
            state = UserState(self.cfg.recent_len, self.cfg.bucket_size)
            added = 0
            for end in sorted(user_ends):
                history_len = max(0, end - start - self.cfg.recent_len)
                for event in events[added:history_len]:  # in key order: straight into the history
                    state.add_to_history(event, self.dataset.categories_of)
                added = max(added, history_len)
                top = state.top(self.cfg.num_buckets)
                self._buckets[(row, end)] = pad_buckets(top, self.cfg.num_buckets, self.cfg.bucket_size)

    def events_before(self, row: int, end: int) -> list[Event]:
        return self._events[row][: end - int(self.dataset.user_offsets[row])]

    def sample(
        self, row: int, end: int, with_targets: bool, target_from: int | None = None
    ) -> dict[str, np.ndarray]:
        """With targets, the event at absolute index i (i >= ``target_from``, default: every event of
        the window) trains both heads: ``action_target`` marks it for the action head and
        ``target_next`` holds event i + 1 for the next-item head (0 = no target)."""
        assert end > int(self.dataset.user_offsets[row]), "a sample needs at least one input event"
        history, recent = split_recent(self.events_before(row, end), self.cfg.recent_len)
        out = pad_recent(recent, self.cfg.recent_len)
        out["user_hash"] = self._hash[row]
        if self.cfg.uses_memory:
            out.update(pad_segments(history, self.cfg.segment_len))
        elif self.cfg.mode == "cause":
            prepared = self._buckets.get((row, end))
            if prepared is None:
                buckets = bucketize(
                    history, self.dataset.categories_of, self.cfg.num_buckets, self.cfg.bucket_size
                )
                prepared = pad_buckets(buckets, self.cfg.num_buckets, self.cfg.bucket_size)
            out.update(prepared)
        if with_targets:
            n = len(recent)
            first = end - n if target_from is None else max(target_from, end - n)
            trained = np.zeros(self.cfg.recent_len, bool)
            trained[self.cfg.recent_len - (end - first) :] = True
            target = np.zeros(self.cfg.recent_len, np.int64)
            target[-n:] = self.dataset.item[end - n + 1 : end + 1]
            out["target_next"] = np.where(trained, target, 0)
            out["action_target"] = trained & out["mask"]
        return out

    def batch(
        self,
        rows: np.ndarray,
        ends: np.ndarray,
        with_targets: bool,
        trim: bool = False,
        target_from: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Stacked samples. ``trim`` drops the columns of left padding that every sample has: the
        backbone is padding-invariant, so only the cost changes (a batch of short windows stays short)."""
        starts = [None] * len(rows) if target_from is None else [int(t) for t in target_from]
        samples = [
            self.sample(int(r), int(e), with_targets, t) for r, e, t in zip(rows, ends, starts, strict=True)
        ]
        out = stack(samples)
        if trim:
            keep = max(int(out["mask"].sum(1).max()), 1)
            for k in RECENT_KEYS:
                if k in out:
                    out[k] = out[k][:, -keep:]
        return out

    def cost_lengths(self, rows: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """What a sample's cost grows with, to batch similar samples together: the recent-window
        length (events before ``end``, at most L), or with the memory compressor all its events
        (the history's segments are padded to the longest in a batch)."""
        events = ends - self.dataset.user_offsets[rows]
        return events if self.cfg.uses_memory else np.minimum(events, self.cfg.recent_len)

    def seen_items(self, row: int, end: int) -> np.ndarray:
        """Every item the user interacted with before ``end``."""
        start = int(self.dataset.user_offsets[row])
        return np.unique(self.dataset.item[start:end])
