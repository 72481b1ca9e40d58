"""HSTU + CAUSE behaviour: shapes, causality, padding invariance, learning, the planted signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.cause import model_inputs
from model.evaluate import to_tensors
from model.samples import SampleBuilder
from model.train import TrainConfig, build_model, train

SMALL = {
    "recent_len": 8,
    "num_buckets": 4,
    "bucket_size": 8,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "dropout": 0.0,
}


@pytest.fixture(scope="module")
def cause_model(tiny_dataset):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_model(tiny_dataset, mode="cause", **SMALL).eval()


def _batch(dataset, model, rows=range(4)):  # type: ignore[no-untyped-def]
    builder = SampleBuilder(dataset, model.cfg)
    rows = np.array(list(rows))
    ends = dataset.user_offsets[rows + 1] - 1
    return to_tensors(builder.batch(rows, ends, with_targets=True), "cpu")


def test_shapes(tiny_dataset, cause_model) -> None:  # type: ignore[no-untyped-def]
    batch = _batch(tiny_dataset, cause_model)
    out, valid = cause_model.encode(**model_inputs(cause_model, batch))
    assert out.shape == (4, cause_model.cfg.seq_len, 32)  # 1 + V + 2L = 1 + 4 + 16
    assert cause_model.cfg.seq_len == 21
    assert valid.shape == (4, 21)
    scores = cause_model.score_all(**model_inputs(cause_model, batch))
    assert scores.shape == (4, tiny_dataset.num_items + 1)
    assert torch.isinf(scores[:, 0]).all()


def test_no_future_leakage(tiny_dataset, cause_model) -> None:  # type: ignore[no-untyped-def]
    """Changing a later event (item or action) must not change any earlier position's output."""
    batch = _batch(tiny_dataset, cause_model)
    with torch.no_grad():
        before, _ = cause_model.encode(**model_inputs(cause_model, batch))
        changed = {k: v.clone() for k, v in batch.items()}
        changed["items"][:, -1] = (changed["items"][:, -1] % tiny_dataset.num_items) + 1
        changed["actions"][:, -1] = 3 - changed["actions"][:, -1]
        changed["ts"][:, -1] += 10_000
        after, _ = cause_model.encode(**model_inputs(cause_model, changed))
    last_item = cause_model.cfg.seq_len - 2  # [..., item_L, action_L]
    torch.testing.assert_close(before[:, :last_item], after[:, :last_item])
    assert not torch.allclose(before[:, last_item:], after[:, last_item:])


def test_action_position_does_not_see_its_own_action(tiny_dataset, cause_model) -> None:  # type: ignore[no-untyped-def]
    batch = _batch(tiny_dataset, cause_model)
    with torch.no_grad():
        before, _ = cause_model.encode(**model_inputs(cause_model, batch))
        changed = {k: v.clone() for k, v in batch.items()}
        changed["actions"][:, -1] = 3 - changed["actions"][:, -1]
        after, _ = cause_model.encode(**model_inputs(cause_model, changed))
    item_pos = cause_model.cfg.seq_len - 2  # predicts action_L: must not see it
    torch.testing.assert_close(before[:, item_pos], after[:, item_pos])


def test_trimmed_batches_score_like_full_ones_and_grouping_keeps_every_sample(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    from model.train import length_grouped

    torch.manual_seed(0)
    model = build_model(tiny_dataset, mode="cause", **{**SMALL, "recent_len": 64}).eval()
    builder = SampleBuilder(tiny_dataset, model.cfg)
    rows = np.arange(6)
    ends = tiny_dataset.user_offsets[rows] + np.array([1, 2, 3, 5, 8, 13])  # short windows
    full = to_tensors(builder.batch(rows, ends, with_targets=True), "cpu")
    trimmed = to_tensors(builder.batch(rows, ends, with_targets=True, trim=True), "cpu")
    assert trimmed["items"].shape == (6, 13)
    assert full["items"].shape == (6, 64)
    with torch.no_grad():
        a = model.score_all(**model_inputs(model, full))
        b = model.score_all(**model_inputs(model, trimmed))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    lengths = np.random.default_rng(0).integers(1, 100, 1000)
    batches = length_grouped(lengths, 64, np.random.default_rng(1), pool=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.5 * np.ptp(lengths)  # batches hold similar lengths


def test_loss_decreases(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_dataset, mode="cause", **SMALL)
    batch = _batch(tiny_dataset, model, rows=range(64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        item, action, _ = model.losses(batch, num_negatives=50)
        opt.zero_grad()
        (item + action).backward()
        opt.step()
        losses.append(float((item + action).detach()))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_cause_learns_the_long_term_signal_a_short_window_misses(tmp_path: Path) -> None:
    """Synthetic users have 4 persistent favourite categories; a 4-event window cannot show them all.

    Both models get a single user-hash bucket, so neither can memorise a user's favourites in its
    user embedding: what the favourites are must come from the events. With the same backbone and
    budget, CAUSE (4 recent events + history tokens) must put more of its top-10 in the user's
    favourite categories than HSTU on the same 4 events. (Measured here: 0.61 vs 0.56 with 600
    users. NDCG@10 is not asserted: at this size its standard error, ~0.015, is as large as the gap.)
    """
    from model.data import load_dataset
    from model.train import load_model

    data = load_dataset(
        "synthetic",
        num_users=600,
        num_items=400,
        num_categories=16,
        events_per_user=80,
        p_long_term=0.5,
        long_term=4,
        seed=1,
    )
    favourites = data.extras["favourites"]
    share = {}
    for mode in ("hstu", "cause"):
        cfg = TrainConfig(epochs=8, patience=8, lr=3e-3, samples_per_user=8, batch_size=64, seed=0)
        train(
            data,
            {**SMALL, "recent_len": 4, "mode": mode, "user_hash_buckets": 1},
            cfg,
            tmp_path / mode,
            progress=False,
        )
        model = load_model(tmp_path / mode)
        builder = SampleBuilder(data, model.cfg)
        split = data.split("test")
        batch = to_tensors(builder.batch(split.users, split.input_end, with_targets=False), "cpu")
        with torch.no_grad():
            top = model.score_all(**model_inputs(model, batch)).topk(10).indices.numpy()
        hits = []
        for row, items in zip(split.users, top, strict=True):
            fav = {data.categories.internal(c) for c in favourites[data.users.external(int(row) + 1)]}
            hits.append(np.mean([bool(fav & set(data.item_categories[i])) for i in items]))
        share[mode] = float(np.mean(hits))
    assert share["cause"] > share["hstu"] + 0.02, share
