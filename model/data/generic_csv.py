"""Generic CSV adapter.

``events.csv``: header ``user_id,item_id,action,timestamp`` (timestamp in seconds).
``items.csv`` (optional): header ``item_id,categories`` with ``|``-separated categories; this is
also what ``causerec categorize`` writes, so K-Means categories plug in here.
"""

from __future__ import annotations

import csv
from pathlib import Path

from model.data.dataset import Dataset, DatasetError, build_dataset, parse_number

EVENT_COLUMNS = ["user_id", "item_id", "action", "timestamp"]
ITEM_COLUMNS = ["item_id", "categories"]


def _records(path: Path, columns: list[str]) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != columns:
            raise DatasetError(f"{path}:1: header must be {','.join(columns)}, got {header}")
        out = []
        for record in reader:
            if not record:
                continue
            if len(record) != len(columns):
                raise DatasetError(
                    f"{path}:{reader.line_num}: expected {len(columns)} fields, got {len(record)}"
                )
            out.append((reader.line_num, record))
        return out


def read_item_categories(path: Path) -> dict[str, list[str]]:
    return {item: [c for c in cats.split("|") if c] for _, (item, cats) in _records(path, ITEM_COLUMNS)}


def load_csv(
    data_dir: Path, min_events: int = 5, items_csv: Path | None = None, min_rating: float | None = None
) -> Dataset:
    """``min_rating``: the actions are ratings; keep only events rated at least this (as the
    MovieLens adapters do). None keeps every event whatever its action."""
    events = data_dir / "events.csv"
    rows = []
    for lineno, (user, item, action, ts) in _records(events, EVENT_COLUMNS):
        if not action.strip():
            raise DatasetError(f"{events}:{lineno}: action is empty")
        if min_rating is not None and parse_number(events, lineno, "action (a rating)", action) < min_rating:
            continue
        rows.append((user, item, action.strip(), int(parse_number(events, lineno, "timestamp", ts))))
    items_path = items_csv or data_dir / "items.csv"
    categories = read_item_categories(items_path) if items_path.is_file() else {}
    return build_dataset("csv", rows, categories, min_events)
