"""The canonical event table every adapter produces, its id maps and the leave-one-out split."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.bucketing import Event


class DatasetError(ValueError):
    """A data file is missing or malformed; the message names the file and line."""


class IdMap:
    """External ids (strings) <-> dense internal ids starting at 1; 0 is reserved for padding."""

    def __init__(self, external: Iterable[str] = ()) -> None:
        self._external: list[str] = []
        self._internal: dict[str, int] = {}
        for ext in external:
            self.add(ext)

    def add(self, external: str) -> int:
        internal = self._internal.get(external)
        if internal is None:
            self._external.append(external)
            internal = self._internal[external] = len(self._external)
        return internal

    def internal(self, external: str) -> int | None:
        return self._internal.get(external)

    def external(self, internal: int) -> str:
        return self._external[internal - 1]

    def __len__(self) -> int:
        return len(self._external)

    def __contains__(self, external: object) -> bool:
        return external in self._internal

    def to_list(self) -> list[str]:
        return list(self._external)


@dataclass
class Split:
    """Per-user leave-one-out split in time order: ``train`` is everything before valid and test."""

    name: str  # "valid" or "test"
    users: np.ndarray  # (U,) row index into Dataset.user_offsets
    input_end: np.ndarray  # (U,) events [start, input_end) are the model input
    target: np.ndarray  # (U,) index of the held-out event


@dataclass
class Dataset:
    name: str
    users: IdMap
    items: IdMap
    actions: IdMap  # external action values as strings ("4", "5", "like")
    categories: IdMap  # real categories are 1..C; 0 is bucketing.UNCATEGORIZED
    item_categories: list[tuple[int, ...]]  # indexed by internal item id; [0] is the padding item
    # Events sorted by (user, ts, arrival); one row each. Internal ids.
    user: np.ndarray  # (E,) int64, 1-based
    item: np.ndarray  # (E,) int64, 1-based
    action: np.ndarray  # (E,) int64, 1-based
    ts: np.ndarray  # (E,) int64 seconds
    extras: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bounds = np.flatnonzero(np.diff(self.user)) + 1
        self.user_offsets = np.concatenate([[0], bounds, [len(self.user)]]).astype(np.int64)

    @property
    def has_repeats(self) -> bool:
        """Whether some user interacts with one item more than once (repeat consumption)."""
        pairs = self.user * (self.num_items + 1) + self.item
        return len(np.unique(pairs)) < len(pairs)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.user_offsets) - 1

    def categories_of(self, item: int) -> tuple[int, ...]:
        return self.item_categories[item]

    def user_events(self, row: int, end: int | None = None) -> list[Event]:
        """Events of the ``row``-th user (oldest first), up to absolute index ``end``."""
        start, stop = int(self.user_offsets[row]), int(self.user_offsets[row + 1])
        stop = stop if end is None else end
        return [
            Event(int(self.ts[i]), i - start, int(self.item[i]), int(self.action[i]))
            for i in range(start, stop)
        ]

    def split(self, name: str) -> Split:
        """Leave-one-out: ``test`` holds out each user's last event, ``valid`` the one before."""
        back = {"test": 1, "valid": 2}[name]
        lengths = np.diff(self.user_offsets)
        rows = np.flatnonzero(lengths >= 3)  # need at least one training event
        target = self.user_offsets[rows + 1] - back
        return Split(name, rows, target.copy(), target)

    def train_end(self, row: int) -> int:
        """Absolute index one past the user's last training event."""
        return int(self.user_offsets[row + 1]) - 2

    def describe(self) -> dict[str, object]:
        multi = sum(1 for c in self.item_categories[1:] if len(c) > 1)
        return {
            "dataset": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "events": len(self.item),
            "categories": len(self.categories),
            "items_with_several_categories": multi,
            "actions": self.actions.to_list(),
        }

    def item_table(self) -> list[dict[str, object]]:
        return [
            {"item_id": self.items.external(i), "categories": [self.categories.external(c) for c in cats]}
            for i, cats in enumerate(self.item_categories[1:], start=1)
        ]


def build_dataset(
    name: str,
    rows: Sequence[tuple[str, str, str, int]],
    item_categories: dict[str, Sequence[str]],
    min_events: int,
    extras: dict[str, object] | None = None,
) -> Dataset:
    """Canonical table from raw (user, item, action, ts) rows in file order.

    Users with fewer than ``min_events`` events are dropped; ties in time keep file order.
    """
    counts: dict[str, int] = {}
    for user, *_ in rows:
        counts[user] = counts.get(user, 0) + 1
    kept = [r for r in rows if counts[r[0]] >= min_events]
    if not kept:
        raise DatasetError(f"{name}: no user has {min_events} or more events")
    users, items, actions, categories = IdMap(), IdMap(), IdMap(), IdMap()
    for cats in item_categories.values():
        for c in cats:
            categories.add(c)
    u = np.fromiter((users.add(r[0]) for r in kept), np.int64, len(kept))
    i = np.fromiter((items.add(r[1]) for r in kept), np.int64, len(kept))
    a = np.fromiter((actions.add(r[2]) for r in kept), np.int64, len(kept))
    t = np.fromiter((r[3] for r in kept), np.int64, len(kept))
    order = np.lexsort((np.arange(len(kept)), t, u))  # stable: file order breaks time ties
    item_cats: list[tuple[int, ...]] = [()]
    for idx in range(1, len(items) + 1):
        names = item_categories.get(items.external(idx), ())
        item_cats.append(tuple(sorted({c for n in names if (c := categories.internal(n)) is not None})))
    return Dataset(
        name,
        users,
        items,
        actions,
        categories,
        item_cats,
        u[order],
        i[order],
        a[order],
        t[order],
        extras or {},
    )


def read_rows(
    path: Path, sep: str, fields: int, encoding: str = "utf-8", header: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a delimited text file; malformed lines raise DatasetError."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open(encoding=encoding, newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            if header and lineno == 1:
                continue
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep) if fields <= 0 else line.split(sep, fields - 1)
            if fields > 0 and len(parts) != fields:
                raise DatasetError(
                    f"{path}:{lineno}: expected {fields} fields separated by {sep!r}, got {len(parts)}"
                )
            yield lineno, parts


def parse_number(path: Path, lineno: int, what: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} must be a number, got {text!r}") from None
