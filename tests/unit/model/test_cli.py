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
    assert json.loads((run / "run.json").read_text())["train"]["lr"] == 3e-3  # cause's default rate

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
            "--lr",
            "0.002",
            "--out",
            str(tmp_path / "kmeans"),
        ],
    )
    assert result.exit_code == 0, result.output  # K-Means categories train like any others
    kmeans_run = json.loads((tmp_path / "kmeans" / "run.json").read_text())
    assert kmeans_run["dataset"]["categories"] == 3
    assert kmeans_run["train"]["lr"] == 0.002  # --lr overrides the mode's rate

    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bundle" / "manifest.json").is_file()


def test_bad_dataset_gives_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--dataset", "ml-100k", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert "u.data: file not found" in result.output


def test_the_learning_rate_defaults_to_the_modes() -> None:
    from model.config import ModelConfig, TrainConfig, peak_lr

    sizes = {"num_items": 10, "num_actions": 2, "num_categories": 3, "max_item_categories": 1}
    assert peak_lr(TrainConfig(), ModelConfig(**sizes, mode="cause")) == 3e-3
    for mode in ("hstu", "hstu-full"):
        assert peak_lr(TrainConfig(), ModelConfig(**sizes, mode=mode)) == 1e-3
    assert peak_lr(TrainConfig(lr=5e-4), ModelConfig(**sizes, mode="cause")) == 5e-4
