"""The offline commands end to end on tiny data: train -> evaluate --json -> categorize -> export."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from causerec.cli import app

runner = CliRunner()
TINY_MODEL = [
    "--mode",
    "cause",
    "--recent-len",
    "4",
    "--buckets",
    "2",
    "--bucket-size",
    "4",
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "2",
    "--epochs",
    "1",
]


def test_train_evaluate_categorize_export(tmp_path: Path) -> None:
    run = tmp_path / "run"
    synthetic = [
        "--dataset",
        "synthetic",
        "--synthetic-users",
        "60",
        "--synthetic-items",
        "80",
        "--synthetic-events",
        "30",
    ]
    result = runner.invoke(
        app,
        [
            "train",
            *synthetic,
            *TINY_MODEL,
            "--out",
            str(run),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (run / "metrics.json").is_file()
    assert (run / "training.png").stat().st_size > 1000

    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("ndcg@1", "ndcg@10", "ndcg@20", "ndcg@100", "ndcg@200", "mrr", "hr@10", "users", "split"):
        assert key in metrics
    assert metrics["split"] == "test"
    assert 0 <= metrics["ndcg@10"] <= 1

    items = tmp_path / "items.csv"
    result = runner.invoke(app, ["categorize", str(run), "--k", "3", "--out", str(items)])
    assert result.exit_code == 0, result.output
    lines = items.read_text().splitlines()
    assert lines[0] == "item_id,categories"
    assert {line.split(",")[1] for line in lines[1:]} <= {"k0", "k1", "k2"}

    result = runner.invoke(
        app,
        [
            "train",
            *synthetic,
            "--categories-csv",
            str(items),
            *TINY_MODEL,
            "--out",
            str(tmp_path / "kmeans"),
        ],
    )
    assert result.exit_code == 0, result.output  # K-Means categories train like any others
    assert json.loads((tmp_path / "kmeans" / "run.json").read_text())["dataset"]["categories"] == 3

    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bundle" / "manifest.json").is_file()


def test_bad_dataset_gives_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--dataset", "ml-100k", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert "u.data: file not found" in result.output
