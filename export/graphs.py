"""The ONNX graphs of a bundle traced from the same torch modules training uses (the scorer graph,
built by hand around the item table, is export.scorer).

encoder graph   (user, history tokens, recent events) -> unit-norm query vector (cached per user)
history graph   (bucket items, bucket category) -> bucket tokens      (eq. 4, for the store)
fold graph      (memory, one segment of events) -> next memory       (memory compressor, for the store)

Tracing them from ``CauseRecommender`` keeps one definition of every formula: the store never
re-implements the bucket token or the fold, it runs these graphs.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from model.bundle_format import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    FOLD_INPUTS,
    FOLD_OUTPUTS,
    HISTORY_INPUTS,
    HISTORY_OUTPUTS,
    OPSET,
)
from model.cause import CauseRecommender


class EncoderGraph(nn.Module):
    """A user's inputs -> the unit-norm query vector the scorer ranks items with: (B, D)."""

    def __init__(self, model: CauseRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        user_hash: torch.Tensor,
        hist_tokens: torch.Tensor,
        hist_mask: torch.Tensor,
        hist_ts: torch.Tensor,
        items: torch.Tensor,
        actions: torch.Tensor,
        ts: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        cause = self.model.cfg.mode == "cause"
        return self.model.last_state(
            user_hash=user_hash,
            hist_tokens=hist_tokens if cause else None,
            hist_mask=hist_mask if cause else None,
            hist_ts=hist_ts if cause else None,
            items=items,
            actions=actions,
            ts=ts,
            mask=mask,
        )


class HistoryGraph(nn.Module):
    def __init__(self, model: CauseRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, bucket_items: torch.Tensor, bucket_cats: torch.Tensor) -> torch.Tensor:
        """bucket_items (n, G) int64 (0 = empty slot), bucket_cats (n,) int64 -> (n, D) float32."""
        return self.model.history_tokens(bucket_items.unsqueeze(0), bucket_cats.unsqueeze(0)).squeeze(0)


class FoldGraph(nn.Module):
    def __init__(self, model: CauseRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        memory: torch.Tensor,
        seg_items: torch.Tensor,
        seg_actions: torch.Tensor,
        seg_ts: torch.Tensor,
        seg_mask: torch.Tensor,
    ) -> torch.Tensor:
        """memory (n, C, D) float32, one segment per row (n, S) -> the next memory (n, C, D)."""
        return self.model.compressor.fold(self.model, memory, seg_items, seg_actions, seg_ts, seg_mask)


def example_inputs(model: CauseRecommender, batch: int = 2) -> tuple[torch.Tensor, ...]:
    cfg, v = model.cfg, max(model.cfg.history_tokens, 1)
    length = cfg.recent_len
    return (
        torch.zeros(batch, dtype=torch.int64),
        torch.zeros(batch, v, cfg.d_model),
        torch.ones(batch, v, dtype=torch.bool),
        torch.zeros(batch, v, dtype=torch.int64),
        torch.ones(batch, length, dtype=torch.int64),
        torch.ones(batch, length, dtype=torch.int64),
        torch.zeros(batch, length, dtype=torch.int64),
        torch.ones(batch, length, dtype=torch.bool),
    )


def export_encoder_graph(model: CauseRecommender, path: Path) -> None:
    dynamic = {n: {0: "batch"} for n in (*ENCODER_INPUTS, *ENCODER_OUTPUTS)}
    for n in ("items", "actions", "ts", "mask"):
        dynamic[n] = {0: "batch", 1: "recent"}
    torch.onnx.export(
        EncoderGraph(model).eval(),
        example_inputs(model),
        str(path),
        input_names=list(ENCODER_INPUTS),
        output_names=list(ENCODER_OUTPUTS),
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))


def export_history_graph(model: CauseRecommender, path: Path) -> None:
    g = model.cfg.bucket_size
    example = (torch.ones(3, g, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    torch.onnx.export(
        HistoryGraph(model).eval(),
        example,
        str(path),
        input_names=list(HISTORY_INPUTS),
        output_names=list(HISTORY_OUTPUTS),
        dynamic_axes={"bucket_items": {0: "n"}, "bucket_cats": {0: "n"}, "tokens": {0: "n"}},
        opset_version=OPSET,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))


def export_fold_graph(model: CauseRecommender, path: Path) -> None:
    cfg = model.cfg
    n, s = 3, cfg.segment_len
    example = (
        torch.zeros(n, cfg.memory_slots, cfg.d_model),
        torch.ones(n, s, dtype=torch.int64),
        torch.ones(n, s, dtype=torch.int64),
        torch.zeros(n, s, dtype=torch.int64),
        torch.ones(n, s, dtype=torch.bool),
    )
    torch.onnx.export(
        FoldGraph(model).eval(),
        example,
        str(path),
        input_names=list(FOLD_INPUTS),
        output_names=list(FOLD_OUTPUTS),
        dynamic_axes={name: {0: "n"} for name in (*FOLD_INPUTS, *FOLD_OUTPUTS)},
        opset_version=OPSET,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))
