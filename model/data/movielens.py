"""MovieLens adapters: ml-100k, ml-1m and ml-20m (whose format ml-latest and ml-latest-small share).

Events are ratings >= ``min_rating`` (4: the positives; 0: every rating); the action is the rating
value; genres are categories (many-to-many); titles go into ``extras["titles"]`` for the bundle.
"""

from __future__ import annotations

import csv
from pathlib import Path

from model.data.dataset import Dataset, DatasetError, build_dataset, parse_number, read_rows

Row = tuple[str, str, str, int]


def _rating_rows(path: Path, records: object, min_rating: float) -> list[Row]:
    rows: list[Row] = []
    for lineno, (user, item, rating, ts) in records:  # type: ignore[attr-defined]
        value = parse_number(path, lineno, "rating", rating)
        stamp = parse_number(path, lineno, "timestamp", ts)
        if value >= min_rating:
            rows.append((user.strip(), item.strip(), f"{value:g}", int(stamp)))
    return rows


def load_ml_100k(data_dir: Path, min_rating: float = 4.0, min_events: int = 5) -> Dataset:
    ratings = data_dir / "u.data"
    rows = _rating_rows(ratings, read_rows(ratings, "\t", 4), min_rating)
    genre_names: dict[int, str] = {}
    for lineno, (name, idx) in read_rows(data_dir / "u.genre", "|", 2, encoding="latin-1"):
        genre_names[int(parse_number(data_dir / "u.genre", lineno, "genre index", idx))] = name
    genres: dict[str, list[str]] = {}
    titles: dict[str, str] = {}
    items_path = data_dir / "u.item"
    for lineno, parts in read_rows(items_path, "|", 0, encoding="latin-1"):
        flags = parts[5:]
        if len(flags) != len(genre_names):
            raise DatasetError(
                f"{items_path}:{lineno}: expected {len(genre_names)} genre flags, got {len(flags)}"
            )
        # 'unknown' (index 0) is not a genre: such items go to the UNCATEGORIZED bucket.
        genres[parts[0]] = [genre_names[g] for g, f in enumerate(flags) if f == "1" and g != 0]
        titles[parts[0]] = parts[1]
    return build_dataset("ml-100k", rows, genres, min_events, extras={"titles": titles})


def load_ml_1m(data_dir: Path, min_rating: float = 4.0, min_events: int = 5) -> Dataset:
    ratings = data_dir / "ratings.dat"
    rows = _rating_rows(ratings, read_rows(ratings, "::", 4, encoding="latin-1"), min_rating)
    movies = [parts for _, parts in read_rows(data_dir / "movies.dat", "::", 3, encoding="latin-1")]
    genres = {item: [g for g in names.split("|") if g] for item, _title, names in movies}
    titles = {item: title for item, title, _names in movies}
    return build_dataset("ml-1m", rows, genres, min_events, extras={"titles": titles})


def _csv_records(path: Path, fields: int) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # header
        for record in reader:
            if not record:
                continue
            if len(record) != fields:
                raise DatasetError(
                    f"{path}:{reader.line_num}: expected {fields} comma-separated fields, got {len(record)}"
                )
            out.append((reader.line_num, record))
    return out


def load_ml_20m(
    data_dir: Path, min_rating: float = 4.0, min_events: int = 5, name: str = "ml-20m"
) -> Dataset:
    ratings = data_dir / "ratings.csv"
    rows = _rating_rows(ratings, _csv_records(ratings, 4), min_rating)
    movies = [parts for _, parts in _csv_records(data_dir / "movies.csv", 3)]
    genres = {
        item: [g for g in names.split("|") if g and g != "(no genres listed)"]
        for item, _title, names in movies
    }
    titles = {item: title for item, title, _names in movies}
    return build_dataset(name, rows, genres, min_events, extras={"titles": titles})
