"""The scorer graph: (query vectors, exclusions, k) -> exact top-k (scores, ids) over every item.

Built node by node rather than traced: the formula is one MatMul against a constant table, and
what matters is how the top k are selected. A TopK over every item of every row was about half of
the graph's time at 100,000 items (ORT's TopK walks each element with its index; the MatMul and a
max over contiguous memory vectorise), so the selection runs in two exact stages:

1. the (B, N) scores are viewed as (B, N / C, C) chunks of C items and each chunk's max is taken;
2. every item of the top k is in one of the k chunks with the largest maxima (a chunk holding an
   item of score s has max >= s, and at most k chunks can have a max above the k-th score), so a
   TopK over those k chunks' k * C items gives the same items and scores as one over all N.

The chosen chunks are taken in ascending order, so among equal scores the lower item id comes
first, as ONNX TopK orders ties. When k * C is not much smaller than N, one TopK over every item is
cheaper and is used instead (an If on k inside the graph). Column 0 (the padding item) and the
columns that pad N to a multiple of C are always excluded, like the caller's ``exclude`` ids
(-1 pads ``exclude``; it is clamped to column 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from model.bundle_format import OPSET
from model.cause import CauseRecommender

IR_VERSION = 8  # the IR that came with opset 17 (ONNX 1.12): every onnxruntime >= 1.18 reads it
CHUNK = 64
TWO_STAGE_UP_TO = 4
"""Two stages while k * CHUNK * TWO_STAGE_UP_TO <= the padded catalogue, one TopK beyond."""


def scorer_model(table: np.ndarray, two_stage_up_to: int = TWO_STAGE_UP_TO) -> onnx.ModelProto:
    """``table`` (D, N + 1) float32: column i scores item i (0: padding) against a query.
    ``two_stage_up_to`` 0 builds a graph that always takes one TopK over every item."""
    d, columns = table.shape
    padded = -(-columns // CHUNK) * CHUNK
    full = np.zeros((d, padded), np.float32)
    full[:, :columns] = table
    always = np.concatenate([[0], np.arange(columns, padded)]).astype(np.int64)[None]
    chunks = padded // CHUNK

    def const(
        name: str, value: np.ndarray | list[int] | list[float] | int, dtype: type = np.int64
    ) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype), name)

    node = helper.make_node
    initializers = [
        const("table", full, np.float32),
        const("always_excluded", always),
        const("zero", [0]),
        const("one", [1]),
        const("last_axis", [-1]),
        const("as_chunks", [0, chunks, CHUNK]),
        const("as_rows", [0, -1]),
        const("num_chunks", [chunks]),
        const("chunk", CHUNK),
        const("two_stage_limit", [padded // (CHUNK * two_stage_up_to) if two_stage_up_to else 0]),
        const("minus_inf", [-np.inf], np.float32),
    ]
    masked = [
        node("MatMul", ["query", "table"], ["all_scores"]),
        node("Max", ["exclude", "zero"], ["asked"]),
        node("Shape", ["query"], ["query_shape"]),
        node("Slice", ["query_shape", "zero", "one"], ["batch"]),
        node("Concat", ["batch", "one"], ["batch_by_one"], axis=0),
        node("Expand", ["always_excluded", "batch_by_one"], ["always"]),
        node("Concat", ["asked", "always"], ["dropped"], axis=1),
        node("Shape", ["dropped"], ["dropped_shape"]),
        node("Expand", ["minus_inf", "dropped_shape"], ["minus_infs"]),
        node("ScatterElements", ["all_scores", "dropped", "minus_infs"], ["masked"], axis=1),
        node("LessOrEqual", ["k", "two_stage_limit"], ["small_k"]),
        node("Squeeze", ["small_k"], ["use_two_stages"]),
    ]

    def top_k(scores: str, ids: str) -> list[onnx.ValueInfoProto]:
        return [
            helper.make_tensor_value_info(scores, TensorProto.FLOAT, ["batch", "k"]),
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "k"]),
        ]

    two_stages = helper.make_graph(
        [
            node("Reshape", ["masked", "as_chunks"], ["by_chunk"]),
            node("ReduceMax", ["by_chunk"], ["chunk_max"], axes=[2], keepdims=0),
            node("Min", ["k", "num_chunks"], ["k_chunks"]),
            node("TopK", ["chunk_max", "k_chunks"], ["_best_max", "best"], axis=1),
            node("TopK", ["best", "k_chunks"], ["picked", "_order"], axis=1, largest=0),  # ascending
            node("Unsqueeze", ["picked", "last_axis"], ["picked_index"]),
            node("GatherND", ["by_chunk", "picked_index"], ["candidate_chunks"], batch_dims=1),
            node("Reshape", ["candidate_chunks", "as_rows"], ["candidates"]),
            node("TopK", ["candidates", "k"], ["stage_scores", "position"], axis=1),
            node("Div", ["position", "chunk"], ["slot"]),
            node("Mod", ["position", "chunk"], ["offset"]),
            node("GatherElements", ["picked", "slot"], ["chunk_id"], axis=1),
            node("Mul", ["chunk_id", "chunk"], ["first_id"]),
            node("Add", ["first_id", "offset"], ["stage_ids"]),
        ],
        "two_stages",
        [],
        top_k("stage_scores", "stage_ids"),
    )
    one_stage = helper.make_graph(
        [node("TopK", ["masked", "k"], ["full_scores", "full_ids"], axis=1)],
        "one_stage",
        [],
        top_k("full_scores", "full_ids"),
    )
    graph = helper.make_graph(
        [
            *masked,
            node("If", ["use_two_stages"], ["scores", "ids"], then_branch=two_stages, else_branch=one_stage),
        ],
        "scorer",
        [
            helper.make_tensor_value_info("query", TensorProto.FLOAT, ["batch", d]),
            helper.make_tensor_value_info("exclude", TensorProto.INT64, ["batch", "excluded"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        top_k("scores", "ids"),
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    # make_model stamps the installed onnx package's IR version; ONNX Runtime refuses any newer
    # than it knows, so the bundle would load only where onnx is no newer than onnxruntime.
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def scoring_columns(model: CauseRecommender) -> torch.Tensor:
    """(D, N + 1): the model's item vectors over its temperature, so a score is one query @ table
    (model.cause scores ``state @ table.T / temperature``; the constant folds into the table)."""
    with torch.no_grad():
        return (model.scoring_table() / model.cfg.temperature).T.contiguous()


def export_scorer_graph(model: CauseRecommender, path: Path) -> None:
    onnx.save(scorer_model(scoring_columns(model).cpu().numpy()), str(path))
