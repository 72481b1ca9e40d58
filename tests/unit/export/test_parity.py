"""ONNX Runtime vs PyTorch on the same trained weights.

Tolerances: fp32 scores go through ~3 layers of matmuls and LayerNorms whose reduction order
differs between the two runtimes; with logits scaled by 1/temperature (20x) such differences stay
around 1e-5, so 1e-4 is tight enough to catch a wrong op yet loose enough for reduction order.
Bucket tokens are one gather + mean + add: 1e-5 covers summation order.
"""

from __future__ import annotations

import numpy as np
import torch

from model.bucketing import UserState
from model.evaluate import to_tensors
from model.samples import SampleBuilder
from model.train import load_model
from service.bundle import load_bundle
from service.engine import Engine, UserFeatures


def _features(
    batch: dict[str, np.ndarray], i: int, hist: np.ndarray | None, seen: np.ndarray
) -> UserFeatures:
    m = batch["mask"][i]
    return UserFeatures(
        int(batch["user_hash"][i]),
        batch["items"][i][m],
        batch["actions"][i][m],
        batch["ts"][i][m],
        hist_tokens=hist,
        hist_mask=batch["bucket_mask"][i],
        hist_ts=batch["bucket_ts"][i],
        seen=seen,
    )


def test_onnx_scores_and_topk_match_torch(tiny_run, tiny_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    assert_onnx_matches_torch(tiny_run, tiny_bundle, tiny_dataset, 120)


def assert_onnx_matches_torch(run, bundle, dataset, n_users: int) -> None:  # type: ignore[no-untyped-def]
    """Scores within 1e-4 and the same top-k (up to exact ties) for the first test users."""
    model = load_model(run)
    engine = Engine(load_bundle(bundle), device="cpu")
    builder = SampleBuilder(dataset, model.cfg)
    split = dataset.split("test")
    rows, ends = split.users[:n_users], split.input_end[:n_users]
    batch = builder.batch(rows, ends, with_targets=False)
    tensors = to_tensors(batch, "cpu")
    with torch.no_grad():
        hist = model.history_tokens(tensors["bucket_items"], tensors["bucket_cats"])
        scores = model.score_all(
            user_hash=tensors["user_hash"],
            hist_tokens=hist,
            hist_mask=tensors["bucket_mask"],
            hist_ts=tensors["bucket_ts"],
            items=tensors["items"],
            actions=tensors["actions"],
            ts=tensors["ts"],
            mask=tensors["mask"],
        ).numpy()
    k = 20
    users = []
    for i, (row, end) in enumerate(zip(rows, ends, strict=True)):
        seen = builder.seen_items(int(row), int(end))[:5]  # exclusions travel through the graph too
        scores[i, seen] = -np.inf
        users.append(_features(batch, i, hist[i].numpy(), seen))
    ranked = engine.rank(users, k)
    assert len(ranked) == n_users
    worst = 0.0
    for i, r in enumerate(ranked):
        expected = np.sort(scores[i])[::-1][:k]
        worst = max(worst, float(np.abs(r.scores - expected).max()))
        np.testing.assert_allclose(scores[i, r.items], r.scores, atol=1e-4)
        # Same ids up to exact ties: every returned id scores at least the k-th best torch score.
        assert (
            set(r.items) == set(np.argsort(-scores[i], kind="stable")[:k])
            or scores[i, r.items].min() >= expected[-1] - 1e-4
        )
        assert not set(r.items) & set(users[i].seen.tolist())
    assert worst <= 1e-4


def test_store_path_history_tokens_match_torch(tiny_run, tiny_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    model = load_model(tiny_run)
    engine = Engine(load_bundle(tiny_bundle), device="cpu")
    cfg = model.cfg
    builder = SampleBuilder(tiny_dataset, cfg)
    for row in range(0, 100):
        events = builder.events_before(row, int(tiny_dataset.user_offsets[row + 1]))
        state = UserState(cfg.recent_len, cfg.bucket_size)  # the store's incremental form
        for e in events:
            state.append(e, tiny_dataset.categories_of)
        buckets = state.top(cfg.num_buckets)
        items = np.zeros((len(buckets), cfg.bucket_size), np.int64)
        for j, b in enumerate(buckets):
            items[j, : len(b.items)] = b.items
        cats = np.array([b.category for b in buckets], np.int64)
        got = engine.bucket_tokens(items, cats)
        batch = builder.batch(
            np.array([row]), np.array([tiny_dataset.user_offsets[row + 1]]), with_targets=False
        )
        with torch.no_grad():
            expected = model.history_tokens(
                torch.from_numpy(batch["bucket_items"]), torch.from_numpy(batch["bucket_cats"])
            )[0].numpy()
        np.testing.assert_allclose(got, expected[: len(buckets)], atol=1e-5)


def test_io_binding_path_gives_the_same_top_k(tiny_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    """The IO-binding path (the default on CUDA) runs on the CPU provider too: same answers."""
    bundle = load_bundle(tiny_bundle)
    plain, bound = Engine(bundle, device="cpu"), Engine(bundle, device="cpu", io_binding=True)
    rng = np.random.default_rng(0)
    users = [
        UserFeatures(
            int(rng.integers(0, 100)),
            rng.integers(1, 300, n),
            rng.integers(1, 3, n),
            np.sort(rng.integers(0, 10**6, n)),
            seen=rng.integers(1, 300, 3),
        )
        for n in (0, 3, 8)
    ]
    for a, b in zip(plain.rank(users, 10), bound.rank(users, 10), strict=True):
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
