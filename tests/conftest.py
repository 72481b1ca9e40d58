"""Session fixtures: a tiny trained model and its bundle, shared by unit and integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CI = os.environ.get("CI", "").lower() == "true"
SLACK = float(os.environ.get("CAUSEREC_TEST_SLACK", "1"))
"""One factor for every wall-clock bound in the tests: raise it on a loaded or slow machine."""
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
    from model.config import TrainConfig
    from model.train import train

    run = tmp / "run"
    cfg = TrainConfig(
        epochs=epochs,
        lr=3e-3,
        batch_targets=512,
        warmup_steps=10,
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
        # Without ../shared at all (a machine the data was never given to) the data tests skip; a
        # CI machine that has ../shared/data must also have ml-100k, so a green CI means they ran.
        if CI and SHARED_DATA.is_dir():
            raise FileNotFoundError(f"CI=true and {SHARED_DATA} exists, but MovieLens-100K is not at {path}")
        pytest.skip(f"MovieLens-100K not found at {path}")
    return path


@pytest.fixture(scope="session")
def renumbered_bundle(tmp_path_factory, tiny_dataset):  # type: ignore[no-untyped-def]
    """A bundle trained on the same events read in another order: the same catalogue, numbered
    differently (internal ids follow first appearance), as a retrain on refreshed data would be."""
    from model.data.dataset import build_dataset

    d = tiny_dataset
    rows = [
        (d.users.external(int(u)), d.items.external(int(i)), d.actions.external(int(a)), int(t))
        for u, i, a, t in zip(d.user, d.item, d.action, d.ts, strict=True)
    ][::-1]
    names = {
        d.items.external(i): [d.categories.external(c) for c in cats]
        for i, cats in enumerate(d.item_categories[1:], 1)
    }
    reordered = build_dataset("synthetic", rows, names, min_events=5)
    assert reordered.items.to_list() != d.items.to_list()
    return _export(tmp_path_factory, _train(tmp_path_factory.mktemp("renumbered"), reordered, epochs=1))
