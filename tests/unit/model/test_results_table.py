"""experiments.results: a row of the quality table is the mean ± std of its runs, test and validation
side by side, against the popularity row of the same view."""

from __future__ import annotations

from typing import Any


def _run(row: str, seed: int, test: float, valid: float) -> dict[str, Any]:
    return {
        "row": row,
        "seed": seed,
        "test": {"ndcg@10": test, "ndcg@20": test, "mrr": test},
        "valid": {"ndcg@10": valid, "step": 100},
        "steps": 200,
        "seq_len": 33,
        "train_s_per_epoch": 1.0,
    }


def test_a_row_reports_test_and_validation_over_its_seeds() -> None:
    from experiments.results import Row, quality_table

    runs = [
        {
            "row": "popularity",
            "seed": 0,
            "test": {"ndcg@10": 0.05, "ndcg@20": 0.06, "mrr": 0.04},
            "valid": {"ndcg@10": 0.04},
        },
        _run("HSTU L=16", 0, 0.09, 0.12),
        _run("HSTU L=16", 1, 0.11, 0.10),
    ]
    table = quality_table(runs, [Row("popularity"), Row("HSTU L=16", {"mode": "hstu"})]).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    hstu = dict(zip(header, (c.strip() for c in table[3].strip("|").split("|")), strict=True))
    assert hstu["N@10"] == "0.1000 ± 0.0100"
    assert hstu["valid N@10"] == "0.1100 ± 0.0100"
    assert hstu["x popularity"] == "2.00"
    assert hstu["seeds"] == "2"


def test_the_selection_check_compares_validation_and_test_rankings() -> None:
    from experiments.results import Row, selection_check

    rows = [Row(name, {"mode": "hstu"}) for name in ("a", "b", "c", "d")]
    agree = [_run(n, 0, v, v) for n, v in zip("abcd", (0.1, 0.2, 0.3, 0.4), strict=True)]
    assert "is 1.00; the row validation ranks first, d, is number 1 of 4" in selection_check(agree, rows)
    # Validation's order reversed on test: its favourite is last there.
    reverse = [_run(n, 0, 0.5 - v, v) for n, v in zip("abcd", (0.1, 0.2, 0.3, 0.4), strict=True)]
    assert "is -1.00; the row validation ranks first, d, is number 4 of 4" in selection_check(reverse, rows)
    assert selection_check(agree[:2], rows) == ""  # two rows: no ranking worth reporting
