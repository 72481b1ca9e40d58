"""The obvious recommender every learned model must beat: most popular items first.

Popularity is counted on training events only (each user's events before their validation and
test events), and scored by the same full-ranking protocol as the models (model.evaluate):
the user's earlier items are masked unless the dataset has repeat consumption.
"""

from __future__ import annotations

import numpy as np

from model.data import Dataset, Split
from model.evaluate import ranking_metrics


def train_counts(dataset: Dataset) -> np.ndarray:
    """(num_items + 1,) training events per item; index 0 (padding) is 0."""
    counts = np.zeros(dataset.num_items + 1, np.int64)
    for row in range(dataset.num_users):
        start, end = int(dataset.user_offsets[row]), dataset.train_end(row)
        np.add.at(counts, dataset.item[start:end], 1)
    return counts


def popularity(dataset: Dataset, split: Split) -> dict[str, float | int | str]:
    """Full-ranking metrics of the popularity ranking on ``split``."""
    scores = train_counts(dataset).astype(np.float64)
    scores[0] = -np.inf
    mask_seen = not dataset.has_repeats
    ranks = np.empty(len(split.users), np.float64)
    for n, (row, end, target) in enumerate(zip(split.users, split.input_end, split.target, strict=True)):
        user = scores.copy()
        if mask_seen:
            user[dataset.item[int(dataset.user_offsets[row]) : int(end)]] = -np.inf
        ranks[n] = 1 + np.sum(user > user[dataset.item[target]])
    return {**ranking_metrics(ranks), "split": split.name, "masked_seen": int(mask_seen)}
