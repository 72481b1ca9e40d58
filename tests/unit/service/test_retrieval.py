"""The approximate item index (export.index, service.retrieval) against exact scoring on the same
bundle: recall@20, exact exclusions, and scores on the scorer's scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.bundle import export_bundle
from service.errors import BundleError
from service.runtime import load_engine


@pytest.fixture(scope="module")
def indexed_bundle(tiny_run, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("indexed") / "b"
    export_bundle(tiny_run, out, index="always")
    return out


def test_the_index_finds_what_exact_scoring_finds_and_never_a_seen_item(indexed_bundle) -> None:  # type: ignore[no-untyped-def]
    exact = load_engine(indexed_bundle, device="cpu", retrieval="exact")
    approx = load_engine(indexed_bundle, device="cpu", retrieval="index")
    assert exact.index is None
    assert approx.index is not None
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(200, exact.d_model)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    seen = [rng.integers(1, 300, 20) for _ in queries]
    want, got = exact.score(queries, seen, 20), approx.score(queries, seen, 20)
    recall = np.mean([len(set(w.items) & set(g.items)) / 20 for w, g in zip(want, got, strict=True)])
    assert recall >= 0.95, recall
    for w, g, s in zip(want, got, seen, strict=True):
        assert len(g.items) == 20
        assert not set(g.items) & set(s.tolist())  # exclusions stay exact
        common = np.intersect1d(w.items, g.items)
        np.testing.assert_allclose(  # the same scale as the scorer graph: cosine / temperature
            g.scores[np.isin(g.items, common)][np.argsort(g.items[np.isin(g.items, common)])],
            w.scores[np.isin(w.items, common)][np.argsort(w.items[np.isin(w.items, common)])],
            atol=1e-4,
        )


def test_auto_uses_the_index_on_cpu_and_a_bundle_without_one_is_refused_for_index(
    indexed_bundle, tiny_bundle
) -> None:  # type: ignore[no-untyped-def]
    assert load_engine(indexed_bundle, device="cpu", retrieval="auto").index is not None
    assert load_engine(tiny_bundle, device="cpu", retrieval="auto").index is None  # small: none exported
    with pytest.raises(BundleError, match="has no item index"):
        load_engine(tiny_bundle, device="cpu", retrieval="index")
