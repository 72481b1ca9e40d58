"""Name -> adapter, and the one entry point every command uses to load data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

from model.data.dataset import Dataset, DatasetError, build_dataset
from model.data.generic_csv import load_csv, read_item_categories
from model.data.movielens import load_ml_1m, load_ml_20m, load_ml_100k
from model.data.synthetic import SyntheticConfig, generate


@dataclass(frozen=True)
class Adapter:
    name: str
    files: str
    load: Callable[..., Dataset]


ADAPTERS = {
    a.name: a
    for a in [
        Adapter("ml-100k", "u.data, u.item, u.genre (genres as categories)", load_ml_100k),
        Adapter("ml-1m", "ratings.dat, movies.dat ('::'-separated)", load_ml_1m),
        Adapter("ml-20m", "ratings.csv, movies.csv", load_ml_20m),
        Adapter(
            "ml-latest",
            "ratings.csv, movies.csv of ml-latest or ml-latest-small (ml-20m's format)",
            partial(load_ml_20m, name="ml-latest"),
        ),
        Adapter(
            "csv", "events.csv (user_id,item_id,action,timestamp), items.csv (item_id,categories)", load_csv
        ),
        Adapter(
            "synthetic", "none: generated from a seed", lambda _dir, **kw: generate(SyntheticConfig(**kw))
        ),
    ]
}

SYNTHETIC_OPTIONS = {f.name for f in fields(SyntheticConfig)}


def load_dataset(
    name: str, data_dir: Path | None = None, categories_csv: Path | None = None, **options: object
) -> Dataset:
    """Load dataset ``name``; ``categories_csv`` (items.csv format) replaces its categories."""
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(ADAPTERS)}")
    if name != "synthetic" and data_dir is None:
        raise DatasetError(f"dataset {name!r} needs --data-dir")
    if name == "synthetic":
        options = {k: v for k, v in options.items() if k in SYNTHETIC_OPTIONS}
    else:
        options = {k: v for k, v in options.items() if k not in SYNTHETIC_OPTIONS}
    dataset = ADAPTERS[name].load(Path(data_dir) if data_dir else None, **options)
    if categories_csv is not None:
        dataset = with_categories(dataset, read_item_categories(Path(categories_csv)))
    return dataset


def with_categories(dataset: Dataset, categories: dict[str, list[str]]) -> Dataset:
    """The same events with item categories replaced (e.g. by K-Means clusters)."""
    rows = [
        (
            dataset.users.external(int(u)),
            dataset.items.external(int(i)),
            dataset.actions.external(int(a)),
            int(t),
        )
        for u, i, a, t in zip(dataset.user, dataset.item, dataset.action, dataset.ts, strict=True)
    ]
    return build_dataset(dataset.name, rows, categories, min_events=1, extras=dataset.extras)
