"""Token layouts (model/layouts.py): no leakage of the predicted action or of later events,
padding invariance, training, and ONNX parity through the serving engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.cause import model_inputs
from model.config import TOKEN_LAYOUTS, TrainConfig
from model.evaluate import to_tensors
from model.samples import SampleBuilder
from model.train import build_model, train
from tests.conftest import TINY_MODEL
from tests.unit.export.test_parity import assert_onnx_matches_torch

LAYOUTS = list(TOKEN_LAYOUTS)
SMALL = {"recent_len": 8, "num_buckets": 4, "bucket_size": 8, "d_model": 32, "num_layers": 2, "num_heads": 4}


def _model(dataset, layout: str, **overrides):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = {**SMALL, "dropout": 0.0, "token_layout": layout, **overrides}
    return build_model(dataset, mode="cause", **cfg).eval()


def _heads(model, batch):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out, _ = model.encode(**model_inputs(model, batch))
        return model.layout.heads(model, out[:, model.recent_offset :], batch["actions"], batch["mask"])


def _batch(dataset, model):  # type: ignore[no-untyped-def]
    rows = np.arange(6)
    ends = dataset.user_offsets[rows + 1] - 1
    return to_tensors(SampleBuilder(dataset, model.cfg).batch(rows, ends, with_targets=True), "cpu")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_head_sees_its_target_or_a_later_event(tiny_dataset, layout) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_dataset, layout)
    batch = _batch(tiny_dataset, model)
    next_q, action_in = _heads(model, batch)
    assert next_q.shape == action_in.shape == (6, 8, 32)
    # The newest action changes: the head that predicts it must not move.
    flipped = {k: v.clone() for k, v in batch.items()}
    flipped["actions"][:, -1] = 3 - flipped["actions"][:, -1]
    _, action_in_after = _heads(model, flipped)
    torch.testing.assert_close(action_in[:, -1], action_in_after[:, -1])
    # The newest event changes completely: nothing at an earlier position may move.
    changed = {k: v.clone() for k, v in flipped.items()}
    changed["items"][:, -1] = changed["items"][:, -1] % tiny_dataset.num_items + 1
    changed["ts"][:, -1] += 10_000
    next_after, action_after = _heads(model, changed)
    torch.testing.assert_close(next_q[:, :-1], next_after[:, :-1])
    torch.testing.assert_close(action_in[:, :-1], action_after[:, :-1])
    assert not torch.allclose(next_q[:, -1], next_after[:, -1])  # the newest event is used


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_scores_do_not_depend_on_padding(tiny_dataset, layout) -> None:  # type: ignore[no-untyped-def]
    short = _model(tiny_dataset, layout)
    long = _model(tiny_dataset, layout, recent_len=16)
    long.load_state_dict(short.state_dict())
    batch = _batch(tiny_dataset, short)
    padded = dict(batch)
    for k in ("items", "actions", "ts", "mask"):
        padded[k] = torch.cat([torch.zeros_like(batch[k]), batch[k]], dim=1)
    with torch.no_grad():
        a = short.score_all(**model_inputs(short, batch))
        b = long.score_all(**model_inputs(long, padded))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_one_token_per_event_halves_the_sequence(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    lengths = {layout: _model(tiny_dataset, layout).cfg.seq_len for layout in LAYOUTS}
    assert lengths == {
        "interleaved": 1 + 4 + 16,
        "stacked": 1 + 4 + 8,
        "late-fusion": 1 + 4 + 8,
        "attn-mvp": 1 + 4 + 8,
        "items": 1 + 4 + 8,
    }


@pytest.mark.parametrize("layout", ["stacked", "late-fusion", "attn-mvp", "items"])
def test_layout_trains_exports_and_matches_onnx(tiny_dataset, tmp_path, layout) -> None:  # type: ignore[no-untyped-def]
    from export.bundle import export_bundle
    from service.bundle import load_bundle

    run = tmp_path / "run"
    result = train(
        tiny_dataset,
        {**TINY_MODEL, "token_layout": layout},
        TrainConfig(epochs=2, seed=0, warmup_steps=10),
        run,
        progress=False,
    )
    first, last = result["history"][0]["item_loss"], result["history"][-1]["item_loss"]
    assert last < 0.9 * first, (first, last)  # measured: 9.2 -> 6.7 in 2 epochs
    export_bundle(run, tmp_path / "bundle")
    assert load_bundle(tmp_path / "bundle").manifest.token_layout == layout
    assert_onnx_matches_torch(run, tmp_path / "bundle", tiny_dataset, 40)
