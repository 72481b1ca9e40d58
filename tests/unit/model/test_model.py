"""HSTU + CAUSE behaviour: shapes, causality, padding invariance, learning, the planted signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.cause import model_inputs
from model.config import TrainConfig
from model.evaluate import to_tensors
from model.samples import SampleBuilder
from model.train import build_model, train

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


def test_trimmed_batches_score_like_full_ones(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
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


PREFIX_MODELS = {
    "hstu": {"mode": "hstu"},
    "cause": {"mode": "cause"},
    "cause-stacked": {"mode": "cause", "token_layout": "stacked"},
    "sasrec": {"mode": "hstu", "backbone": "transformer", "token_layout": "items"},
}


@pytest.mark.parametrize("variant", list(PREFIX_MODELS))
def test_every_position_of_a_window_equals_serving_its_prefix(tiny_dataset, variant) -> None:  # type: ignore[no-untyped-def]
    """Training reads the next-item query at every position of a 64-event window; serving computes
    it from the events up to that position. They must be the same function of those events: the
    attention normaliser, positions, time gaps and the user token's stamp may not depend on what
    follows (each of the old per-sequence count and newest-event stamp breaks this by ~1e-2)."""
    torch.manual_seed(0)
    model = build_model(tiny_dataset, **{**SMALL, "recent_len": 64, **PREFIX_MODELS[variant]}).eval()
    row = int(np.argmax(np.diff(tiny_dataset.user_offsets)))  # the longest user: history + 64 events
    end = int(tiny_dataset.user_offsets[row + 1]) - 1
    full = to_tensors(
        SampleBuilder(tiny_dataset, model.cfg).batch(np.array([row]), np.array([end]), False), "cpu"
    )
    assert bool(full["mask"].all())
    with torch.no_grad():
        out, _ = model.encode(**model_inputs(model, full))
        window, _ = model.layout.heads(model, out[:, model.recent_offset :], full["actions"], full["mask"])
        for k in range(1, 65):  # the prefix of k events, left-padded to the same shape
            prefix = {key: v.clone() for key, v in full.items()}
            for key in ("items", "actions", "ts", "mask"):
                prefix[key] = torch.cat([torch.zeros_like(full[key][:, k:]), full[key][:, :k]], dim=1)
            state = model.last_state(**model_inputs(model, prefix))
            torch.testing.assert_close(state[0], F.normalize(window[0, k - 1], dim=-1), atol=1e-5, rtol=0)


def test_the_user_token_is_not_stamped_with_a_later_event(tiny_dataset, cause_model) -> None:  # type: ignore[no-untyped-def]
    """Moving the newest event in time changes no earlier state through the time bias."""
    with torch.no_grad():
        for layer in cause_model.backbone.layers:
            assert layer.rab.time.weight.abs().max() > 0  # a zero time table would hide a leak
    batch = _batch(tiny_dataset, cause_model)
    later = {k: v.clone() for k, v in batch.items()}
    later["ts"][:, -1] += 10**6
    with torch.no_grad():
        before, _ = cause_model.encode(**model_inputs(cause_model, batch))
        after, _ = cause_model.encode(**model_inputs(cause_model, later))
    newest_item = cause_model.cfg.seq_len - 2
    torch.testing.assert_close(before[:, :newest_item], after[:, :newest_item])


def test_batches_are_counted_in_targets_and_tiles_cover_every_target_once(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    from model.batches import length_grouped, tile

    rng = np.random.default_rng(0)
    for window in (4, 16):
        w = tile(tiny_dataset, window, rng)
        covered = np.zeros(len(tiny_dataset.item), int)
        for end, first in zip(w.ends, w.target_from, strict=True):
            assert 0 < end - first <= window
            covered[first + 1 : end + 1] += 1  # next-item targets (first, end]
        for row in range(tiny_dataset.num_users):
            start, last = int(tiny_dataset.user_offsets[row]), tiny_dataset.train_end(row) - 1
            assert (covered[start + 1 : last + 1] == 1).all()  # each training target exactly once
            assert covered[start] == 0
            assert (covered[last + 1 : tiny_dataset.user_offsets[row + 1]] == 0).all()
        batches = length_grouped(np.minimum(w.ends, 64), w.targets, 256, rng, pool=4)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(w.ends)))
        sizes = [int(w.targets[b].sum()) for b in batches]
        assert max(sizes) < 256 + window  # never more than one window over the budget
        assert np.median(sizes) >= 256


def test_loss_decreases(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_dataset, mode="cause", **SMALL)
    batch = _batch(tiny_dataset, model, rows=range(64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        item, action, _ = model.losses(batch, num_negatives=None)
        opt.zero_grad()
        (item + action).backward()
        opt.step()
        losses.append(float((item + action).detach()))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("compressor", ["cause", "memory"])
def test_the_bias_tables_train_at_their_own_rate(tiny_dataset, compressor) -> None:  # type: ignore[no-untyped-def]
    """Every relative-bias table (the compressor's HSTU layers included) is in the scaled group,
    every other parameter in the plain one; a scale of 0 then freezes exactly those tables."""
    from model.train import lr_at, param_groups

    torch.manual_seed(0)
    model = build_model(tiny_dataset, mode="cause", compressor=compressor, **SMALL)
    groups = param_groups(model, 0.0)
    ids = [[id(p) for p in g["params"]] for g in groups]
    rab = {id(p) for n, p in model.named_parameters() if ".rab." in n}
    assert set(ids[1]) == rab
    assert len(rab) == 2 * SMALL["num_layers"] * (1 + (compressor == "memory"))
    assert sorted(ids[0] + ids[1]) == sorted(id(p) for p in model.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(groups, lr=1e-2)
    cfg = TrainConfig(lr=1e-2, warmup_steps=0)
    for g in opt.param_groups:
        g["lr"] = lr_at(0, 10, cfg) * g["lr_scale"]
    item, action, _ = model.losses(_batch(tiny_dataset, model), num_negatives=None)
    (item + action).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(".rab." in n for n in moved)
    assert "backbone.layers.0.uvqk.weight" in moved


@pytest.mark.slow
def test_cause_learns_the_long_term_signal_a_short_window_misses(tmp_path: Path) -> None:
    """Synthetic users have 4 persistent favourite categories; a 4-event window cannot show them all.

    Both models get a single user-hash bucket, so neither can memorise a user's favourites in its
    user embedding: what the favourites are must come from the events. With the same backbone and
    budget, CAUSE (4 recent events + history tokens) must put more of its top-10 in the user's
    favourite categories than HSTU on the same 4 events. CAUSE reads V=8 buckets of the 16
    categories: with 4 favourites and a drifting fifth interest, 4 buckets often miss one. (Measured
    with the training defaults: 0.647 vs 0.599 with 600 users. NDCG@10 is not asserted: at this
    size its standard error, ~0.015, is as large as the gap.)
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
        cfg = TrainConfig(epochs=8, lr=3e-3, batch_targets=256, warmup_steps=10, seed=0)
        train(
            data,
            {**SMALL, "recent_len": 4, "num_buckets": 8, "mode": mode, "user_hash_buckets": 1},
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
