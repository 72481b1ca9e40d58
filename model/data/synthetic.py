"""Seeded synthetic users whose long-term history carries signal that a short window misses.

Each user has ``long_term`` favourite categories that persist for their whole life, and a drifting
short-term category that changes every ``drift_every`` events on average. Each event comes from a
favourite with probability ``p_long_term``, else from the current drift category; inside a category
items follow a Zipf-like popularity. A short window mostly shows the drift, so a model that can see
the compressed history should predict the favourites better: that is the planted signal.
Actions: "like" is far more likely on a favourite category than on drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data.dataset import Dataset, build_dataset


@dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 1000
    num_items: int = 2000
    num_categories: int = 20
    events_per_user: int = 150  # mean; each user gets 0.5x .. 1.5x of it unless fixed_length
    fixed_length: bool = False
    long_term: int = 2  # favourite categories per user
    p_long_term: float = 0.5
    drift_every: float = 25.0
    p_second_category: float = 0.3  # items in two categories (many-to-many)
    seed: int = 0


def generate(cfg: SyntheticConfig) -> Dataset:
    rng = np.random.default_rng(cfg.seed)
    primary = rng.integers(0, cfg.num_categories, cfg.num_items)
    second = np.where(
        rng.random(cfg.num_items) < cfg.p_second_category,
        rng.integers(0, cfg.num_categories, cfg.num_items),
        -1,
    )
    members = [np.flatnonzero(primary == c) for c in range(cfg.num_categories)]
    weights = []
    for m in members:
        w = 1.0 / (1.0 + np.arange(len(m))) ** 0.8
        weights.append(np.cumsum(w / w.sum()))

    rows: list[tuple[str, str, str, int]] = []
    favourites: dict[str, list[str]] = {}
    for u in range(cfg.num_users):
        n = cfg.events_per_user if cfg.fixed_length else int(cfg.events_per_user * rng.uniform(0.5, 1.5))
        favs = rng.choice(cfg.num_categories, cfg.long_term, replace=False)
        favourites[f"u{u}"] = [f"c{c}" for c in favs]
        switches = np.cumsum(rng.random(n) < 1.0 / cfg.drift_every)
        drift = rng.integers(0, cfg.num_categories, switches[-1] + 1)[switches]
        from_fav = rng.random(n) < cfg.p_long_term
        cats = np.where(from_fav, favs[rng.integers(0, cfg.long_term, n)], drift)
        like = rng.random(n) < np.where(from_fav, 0.8, 0.15)
        ts = (
            1_600_000_000 + rng.integers(0, 10**7) + np.cumsum(rng.exponential(600.0, n).astype(np.int64) + 1)
        )
        for j in range(n):
            c = cats[j]
            if len(members[c]) == 0:
                continue
            pick = members[c][min(int(np.searchsorted(weights[c], rng.random())), len(members[c]) - 1)]
            rows.append((f"u{u}", f"i{pick}", "like" if like[j] else "view", int(ts[j])))
    categories = {
        f"i{i}": [f"c{primary[i]}"]
        + ([f"c{second[i]}"] if second[i] >= 0 and second[i] != primary[i] else [])
        for i in range(cfg.num_items)
    }
    return build_dataset("synthetic", rows, categories, min_events=5, extras={"favourites": favourites})
