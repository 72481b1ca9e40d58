"""What one epoch trains on: windows that tile every user's training events, grouped into batches
of similar length, each batch split into chunks that fit the memory budget.

Every training event is a target exactly once per epoch (for the next-item head as the item that
follows, for the action head as the event itself), whatever the window length L, so a longer
window changes the context targets are predicted from, not how much each target weighs. The
tiling's phase is random per user and epoch, so a target is not always at the same place in its
window: it sees between 0 and L - 1 earlier events of its window (and, with CAUSE, the history
tokens of everything before the window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data import Dataset


@dataclass
class Windows:
    """Samples of one epoch: the input is events [.., end) of ``rows``; events at index >=
    ``target_from`` are the targets (model.samples.SampleBuilder.sample)."""

    rows: np.ndarray  # (N,) user rows
    ends: np.ndarray  # (N,) absolute index one past the window's newest input event
    target_from: np.ndarray  # (N,) absolute index of the window's first target event

    @property
    def targets(self) -> np.ndarray:
        """(N,) next-item targets of each window."""
        return self.ends - self.target_from


def tile(dataset: Dataset, window: int, rng: np.random.Generator) -> Windows:
    """Windows ending at last, last - phase, last - phase - L, ... down to the user's first event,
    phase uniform in [0, L): the target ranges (next end, end] tile each user's training events.

    ``window`` is the number of events a window's targets may span: L for a recent window of L
    events (all of them fit as input), or the cap for hstu-full."""
    rows, ends, starts = [], [], []
    for row in range(dataset.num_users):
        first, last = int(dataset.user_offsets[row]), dataset.train_end(row) - 1
        if last <= first:
            continue
        phase = int(rng.integers(0, window))
        cuts = [last] + list(range(last - phase, first, -window))
        cuts = sorted(set(cuts), reverse=True)
        lower = cuts[1:] + [first]
        rows += [row] * len(cuts)
        ends += cuts
        starts += lower
    rows_a, ends_a, starts_a = np.asarray(rows), np.asarray(ends), np.asarray(starts)
    order = rng.permutation(len(rows_a))
    return Windows(rows_a[order], ends_a[order], starts_a[order])


def length_grouped(
    lengths: np.ndarray, targets: np.ndarray, batch_targets: int, rng: np.random.Generator, pool: int = 32
) -> list[np.ndarray]:
    """Batches of sample indices holding about ``batch_targets`` targets each, of similar window
    lengths, in random order.

    A step's size is counted in targets, not windows, so every window length L trains with the same
    number of steps per epoch and the same gradient noise (a window of 64 events holds 4x the
    targets of one of 16). Samples are sorted by length within pools of ``pool`` batches (the order
    inside a pool stays random), so trimmed batches of short windows cost little and every epoch
    still mixes users."""
    batches: list[np.ndarray] = []
    per_pool = batch_targets * pool
    bounds = np.searchsorted(np.cumsum(targets), np.arange(per_pool, int(targets.sum()) + per_pool, per_pool))
    lo = 0
    for hi in np.minimum(bounds + 1, len(lengths)):
        idx = np.arange(lo, hi)
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        cut = np.searchsorted(
            np.cumsum(targets[idx]), np.arange(batch_targets, per_pool + batch_targets, batch_targets)
        )
        batches += [b for b in np.split(idx, np.unique(np.minimum(cut + 1, len(idx)))) if len(b)]
        lo = hi
        if lo >= len(lengths):
            break
    return [batches[i] for i in rng.permutation(len(batches))]


def chunks(
    count: int,
    tokens: int,
    targets: int,
    layers: int,
    heads: int,
    logits_width: int,
    budget_bytes: float,
) -> list[slice]:
    """Split ``count`` windows of ``tokens`` backbone tokens and up to ``targets`` targets each into
    slices whose saved activations fit the budget: attention scores (about 6 tensors of H x T x T per
    layer are kept for the backward pass) plus the logits of the loss. Gradients of the slices are
    accumulated, so the optimiser step is the same as for the whole batch."""
    per_window = 4 * (6 * layers * heads * tokens**2 + 3 * targets * logits_width)
    size = int(max(1, min(count, budget_bytes // per_window)))
    return [slice(lo, min(lo + size, count)) for lo in range(0, count, size)]
