"""Dataset adapters: MovieLens-100K for real, the others on small files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.data import ADAPTERS, DatasetError, load_dataset


@pytest.mark.data
def test_ml100k_loads_users_items_and_genres_as_many_to_many(ml100k_dir: Path) -> None:
    d = load_dataset("ml-100k", ml100k_dir)
    # 943 users rate; 938 keep >= 5 ratings of 4 or 5 (the default positive filter).
    assert d.num_users == 938
    assert len(d.categories) == 18  # 19 genre flags minus 'unknown'
    assert d.describe()["items_with_several_categories"] > 500
    assert set(d.actions.to_list()) == {"4", "5"}
    assert np.all(np.diff(d.user) >= 0)
    for row in range(5):  # time order inside each user
        lo, hi = d.user_offsets[row], d.user_offsets[row + 1]
        assert np.all(np.diff(d.ts[lo:hi]) >= 0)


def test_leave_one_out_split_holds_out_the_last_two_events(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    test, valid = tiny_dataset.split("test"), tiny_dataset.split("valid")
    ends = tiny_dataset.user_offsets[test.users + 1]
    assert np.array_equal(test.target, ends - 1)
    assert np.array_equal(valid.target, ends - 2)
    assert np.array_equal(test.input_end, test.target)


def test_synthetic_is_deterministic_per_seed() -> None:
    a = load_dataset("synthetic", num_users=20, num_items=50, seed=3)
    b = load_dataset("synthetic", num_users=20, num_items=50, seed=3)
    c = load_dataset("synthetic", num_users=20, num_items=50, seed=4)
    assert np.array_equal(a.item, b.item)
    assert np.array_equal(a.ts, b.ts)
    assert not np.array_equal(a.item[:50], c.item[:50])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_adapter_with_many_to_many_categories(tmp_path: Path) -> None:
    rows = "\n".join(f"u{u},i{(u + j) % 4},click,{100 + j}" for u in range(3) for j in range(6))
    _write(tmp_path / "events.csv", "user_id,item_id,action,timestamp\n" + rows + "\n")
    _write(tmp_path / "items.csv", "item_id,categories\ni0,a|b\ni1,b\ni2,\n")
    d = load_dataset("csv", tmp_path)
    assert d.num_users == 3
    assert d.item_categories[d.items.internal("i0")] == tuple(
        sorted([d.categories.internal("a"), d.categories.internal("b")])
    )
    assert d.item_categories[d.items.internal("i2")] == ()  # no category: the reserved bucket


@pytest.mark.parametrize(
    ("adapter", "files", "message"),
    [
        (
            "csv",
            {"events.csv": "user_id,item_id,action,timestamp\nu1,i1,click,notatime\n"},
            "events.csv:2: timestamp must be a number",
        ),
        ("csv", {"events.csv": "user,item\n"}, "events.csv:1: header must be"),
        ("ml-1m", {"ratings.dat": "1::2::5\n", "movies.dat": ""}, "ratings.dat:1: expected 4 fields"),
        (
            "ml-20m",
            {"ratings.csv": "userId,movieId,rating,timestamp\n1,2,x,3\n", "movies.csv": ""},
            "ratings.csv:2: rating must be a number",
        ),
        ("ml-100k", {}, "u.data: file not found"),
    ],
)
def test_bad_files_name_the_file_and_line(
    tmp_path: Path, adapter: str, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(DatasetError, match=message.replace(".", r"\.")):
        load_dataset(adapter, tmp_path)


def test_every_adapter_is_listed() -> None:
    assert set(ADAPTERS) == {"ml-100k", "ml-1m", "ml-20m", "ml-latest", "csv", "synthetic"}


def test_ml1m_and_ml20m_formats_load(tmp_path: Path) -> None:
    """The same canonical table from both MovieLens layouts (ml-20m's also serves ml-latest)."""
    ratings = [(u, m, r, 1000 + 10 * u + m) for u in (1, 2) for m in range(1, 8) for r in (5,)]
    one = tmp_path / "1m"
    one.mkdir()
    _write(one / "ratings.dat", "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings))
    _write(one / "movies.dat", "".join(f"{m}::Movie {m} (1999)::Drama|Comedy\n" for m in range(1, 8)))
    twenty = tmp_path / "20m"
    twenty.mkdir()
    _write(
        twenty / "ratings.csv",
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r}.0,{t}\n" for u, m, r, t in ratings),
    )
    _write(
        twenty / "movies.csv",
        "movieId,title,genres\n" + "".join(f'{m},"Movie, {m} (1999)",Drama|Comedy\n' for m in range(1, 8)),
    )
    a, b = load_dataset("ml-1m", one), load_dataset("ml-20m", twenty)
    for d in (a, b):
        assert (d.num_users, d.num_items, len(d.categories)) == (2, 7, 2)
        assert d.actions.to_list() == ["5"]
    assert np.array_equal(a.item, b.item)
    assert np.array_equal(a.ts, b.ts)
    latest = load_dataset("ml-latest", twenty)  # the same files, under the release's own name
    assert (latest.name, latest.num_items, latest.describe()["events"]) == ("ml-latest", 7, 14)
