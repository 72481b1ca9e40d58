"""experiments.probe: the unchanged splits reproduce the run's own figures; the probes leave the
dataset as they found it."""

from __future__ import annotations

import json

import numpy as np


def test_probe_reproduces_the_run_and_leaves_the_dataset_unchanged(tiny_run, tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    from experiments.probe import probe

    ts = tiny_dataset.ts.copy()
    found = probe(tiny_run, tiny_dataset)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert found["valid"] == round(metrics["best_valid"]["ndcg@10"], 4)
    assert found["test"] == round(metrics["test"]["ndcg@10"], 4)
    assert set(found) == {
        "valid", "test", "test, skip", "valid, no time", "test, no time",
        "valid, no user token", "test, no user token", "bias |max|",
    }  # fmt: skip
    assert all(0 <= v <= 1 for v in found.values())
    np.testing.assert_array_equal(tiny_dataset.ts, ts)


def test_a_shared_user_token_has_no_user_token_probe(tmp_path, tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    """--user-hash-buckets 1: every user already reads the same row, so there is none to take away."""
    from experiments.probe import probe
    from tests.conftest import _train

    found = probe(_train(tmp_path, tiny_dataset, epochs=1, user_hash_buckets=1), tiny_dataset)
    assert set(found) == {"valid", "test", "test, skip", "valid, no time", "test, no time", "bias |max|"}
