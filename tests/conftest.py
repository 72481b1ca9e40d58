"""Session fixtures: a tiny trained model and its bundle, shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = {
    "num_users": 300,
    "num_items": 300,
    "num_categories": 8,
    "events_per_user": 60,
    "p_long_term": 0.3,
    "drift_every": 40.0,
    "seed": 7,
}
TINY_MODEL = {
    "mode": "cause",
    "recent_len": 8,
    "num_buckets": 4,
    "bucket_size": 8,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
}


@pytest.fixture(scope="session")
def tiny_dataset():  # type: ignore[no-untyped-def]
    from model.data import load_dataset

    return load_dataset("synthetic", **TINY)


MEMORY_MODEL = {"compressor": "memory", "memory_slots": 4, "segment_len": 4}


def _train(tmp: Path, dataset, epochs: int = 10, **overrides):  # type: ignore[no-untyped-def]
    from model.train import TrainConfig, train

    run = tmp / "run"
    cfg = TrainConfig(
        epochs=epochs,
        patience=10,
        lr=3e-3,
        samples_per_user=8,
        batch_size=64,
        data={"dataset": "synthetic", "options": TINY},
    )
    train(dataset, {**TINY_MODEL, **overrides}, cfg, run, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset):  # type: ignore[no-untyped-def]
    return _train(tmp_path_factory.mktemp("tiny"), tiny_dataset)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_run):  # type: ignore[no-untyped-def]
    return _export(tmp_path_factory, tiny_run)


@pytest.fixture(scope="session")
def memory_run(tmp_path_factory, tiny_dataset):  # type: ignore[no-untyped-def]
    """The tiny model with the memory compressor (C=4, S=4): parity and store tests, not quality."""
    return _train(tmp_path_factory.mktemp("memory"), tiny_dataset, epochs=2, **MEMORY_MODEL)


@pytest.fixture(scope="session")
def memory_bundle(tmp_path_factory, memory_run):  # type: ignore[no-untyped-def]
    return _export(tmp_path_factory, memory_run)


def _export(tmp_path_factory, run: Path) -> Path:  # type: ignore[no-untyped-def]
    from export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "b1"
    export_bundle(run, out)
    return out


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {path}")
    return path
