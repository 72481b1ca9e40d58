"""The memory compressor (model/memory.py, Rec2PM): segments, folding, teacher forcing, leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.cause import history_inputs, model_inputs
from model.evaluate import to_tensors
from model.samples import SampleBuilder
from model.segments import SEGMENT_KEYS
from model.train import build_model

SMALL = {
    "recent_len": 8,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "dropout": 0.0,
    "compressor": "memory",
    "memory_slots": 4,
    "segment_len": 8,
}


@pytest.fixture(scope="module")
def memory_model(tiny_dataset):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_model(tiny_dataset, mode="cause", **SMALL).eval()


def _batch(dataset, model, rows, ends=None):  # type: ignore[no-untyped-def]
    rows = np.asarray(rows)
    ends = dataset.user_offsets[rows + 1] - 1 if ends is None else np.asarray(ends)
    return to_tensors(SampleBuilder(dataset, model.cfg).batch(rows, ends, with_targets=True), "cpu")


def test_segments_cover_the_history_from_the_first_event(tiny_dataset, memory_model) -> None:  # type: ignore[no-untyped-def]
    builder = SampleBuilder(tiny_dataset, memory_model.cfg)
    start = int(tiny_dataset.user_offsets[0])
    for n in (3, 8, 9, 8 + 17):  # no history, empty history, one event, two full + one open
        sample = builder.sample(0, start + n, with_targets=False)
        history = tiny_dataset.item[start : start + max(n - 8, 0)]
        assert sample["seg_items"].shape == (-(-len(history) // 8), 8)
        np.testing.assert_array_equal(sample["seg_items"][sample["seg_mask"]], history)


def test_memory_ignores_batch_padding(tiny_dataset, memory_model) -> None:  # type: ignore[no-untyped-def]
    """A user's memory is the same alone and beside a user with many more segments."""
    offsets = tiny_dataset.user_offsets
    ends = [offsets[0] + 20, offsets[1 + 1] - 1]  # 12 history events (2 segments) and ~50
    both = _batch(tiny_dataset, memory_model, [0, 1], ends)
    alone = _batch(tiny_dataset, memory_model, [0], ends[:1])
    assert both["seg_mask"].shape[1] > alone["seg_mask"].shape[1]
    with torch.no_grad():
        mem_both = model_inputs(memory_model, both)["hist_tokens"]
        mem_alone = model_inputs(memory_model, alone)["hist_tokens"]
    torch.testing.assert_close(mem_both[:1], mem_alone, atol=1e-5, rtol=1e-5)


def test_first_segment_is_the_same_in_both_training_passes(tiny_dataset, memory_model) -> None:  # type: ignore[no-untyped-def]
    """With one segment, the teacher-forced memory equals sequential folding and the consistency
    loss is 0; with more segments the passes differ (otherwise the loss would teach nothing)."""
    offsets = tiny_dataset.user_offsets
    one = _batch(tiny_dataset, memory_model, [0, 2], [offsets[0] + 14, offsets[2] + 16])
    many = _batch(tiny_dataset, memory_model, [0, 2], [offsets[0] + 40, offsets[2] + 44])
    assert one["seg_mask"].shape[1] == 1
    assert many["seg_mask"].shape[1] > 2
    with torch.no_grad():
        forced, consistency = history_inputs(memory_model, one, teacher_forcing=True)
        torch.testing.assert_close(forced["hist_tokens"], model_inputs(memory_model, one)["hist_tokens"])
        assert float(consistency) < 1e-10
        forced, consistency = history_inputs(memory_model, many, teacher_forcing=True)
        assert float(consistency) > 1e-4
        assert not torch.allclose(forced["hist_tokens"], model_inputs(memory_model, many)["hist_tokens"])


def test_no_position_sees_a_later_event_or_its_own_action(tiny_dataset, memory_model) -> None:  # type: ignore[no-untyped-def]
    batch = _batch(tiny_dataset, memory_model, range(4))
    model = memory_model

    def heads(b):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            out, _ = model.encode(**model_inputs(model, b))
            return model.layout.heads(model, out[:, model.recent_offset :], b["actions"], b["mask"])

    next_q, action_in = heads(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["actions"][:, -1] = 3 - changed["actions"][:, -1]
    torch.testing.assert_close(action_in[:, -1], heads(changed)[1][:, -1])  # predicts it, unseen
    changed["items"][:, -1] = changed["items"][:, -1] % tiny_dataset.num_items + 1
    next_after, action_after = heads(changed)
    torch.testing.assert_close(next_q[:, :-1], next_after[:, :-1])
    torch.testing.assert_close(action_in[:, :-1], action_after[:, :-1])
    assert not torch.allclose(next_q[:, -1], next_after[:, -1])
    # The memory is built from history segments only: a recent event never reaches it.
    with torch.no_grad():
        before = model_inputs(model, batch)["hist_tokens"]
        after = model_inputs(model, changed)["hist_tokens"]
    torch.testing.assert_close(before, after)


def test_consistency_loss_trains_folding_towards_the_reference(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_dataset, mode="cause", **SMALL)
    offsets = tiny_dataset.user_offsets
    rows = np.arange(64)
    batch = _batch(tiny_dataset, model, rows, offsets[rows + 1] - 1)
    assert batch["seg_mask"].shape[1] >= 5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    # Per-target losses, as the trainer weighs them: summed ones (~5,000 here) would drown the mean
    # consistency term and make the check depend on the initialisation.
    targets = float((batch["target_next"] > 0).sum())
    history = []
    for _ in range(40):
        item, action, consistency = model.losses(batch, num_negatives=None)
        opt.zero_grad()
        ((item + action) / targets + consistency).backward()
        opt.step()
        history.append((item.item() / targets, consistency.item()))
    assert history[-1][0] < 0.8 * history[0][0]
    assert history[-1][1] < 0.5 * max(h[1] for h in history)
    assert all(k in batch for k in SEGMENT_KEYS)
