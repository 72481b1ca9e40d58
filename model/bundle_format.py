"""The model bundle's on-disk contract, shared by the writer (export/) and the reader (service/).

Torch-free. A bundle is a directory; every path in the manifest is relative to it, so a bundle
copied to another machine loads there unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, Field

FORMAT_VERSION = 2
"""Bumped whenever a reader of the previous version could misread a bundle. 2: the ranking graph
is split into encoder + scorer (the store caches the encoder's output); item titles."""

MANIFEST = "manifest.json"
ENCODER_GRAPH = "encoder.onnx"  # a user's inputs -> the unit-norm query vector
SCORER_GRAPH = "scorer.onnx"  # query vectors + exclusions + k -> top-k (exact, every item scored)
HISTORY_GRAPH = "history.onnx"
FOLD_GRAPH = "fold.onnx"  # memory compressor: (memory, one segment) -> next memory
MEMORY_INIT = "memory_init.npy"  # memory compressor: M_0, (C, D) float32
CATALOG = "catalog.json"
INDEX_FILE = "items.faiss"  # optional: approximate item index for large catalogues (export.index)
OPSET = 17
SUPPORTED_OPSETS = range(17, 22)

# Graph input/output names: the engine binds by name.
ENCODER_INPUTS = ("user_hash", "hist_tokens", "hist_mask", "hist_ts", "items", "actions", "ts", "mask")
ENCODER_OUTPUTS = ("query",)
SCORER_INPUTS = ("query", "exclude", "k")
SCORER_OUTPUTS = ("scores", "ids")
HISTORY_INPUTS = ("bucket_items", "bucket_cats")
HISTORY_OUTPUTS = ("tokens",)
FOLD_INPUTS = ("memory", "seg_items", "seg_actions", "seg_ts", "seg_mask")
FOLD_OUTPUTS = ("next_memory",)


def file_sha256(path: Path) -> str:
    """The checksum the manifest records for every file of a bundle."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Manifest(BaseModel):
    """What a reader needs to know about a bundle before opening any graph."""

    format_version: int = Field(description="FORMAT_VERSION of the writer")
    version: str = Field(description="content hash of the graphs and catalog: the model version")
    created_at: str = Field(description="UTC ISO-8601 time of export")
    mode: str = Field(description="hstu | hstu-full | cause")
    token_layout: str = Field("interleaved", description="interleaved | stacked | late-fusion | attn-mvp")
    recent_len: int = Field(description="L: the most recent events fed raw")
    length_buckets: list[int] = Field(description="recent lengths the engine pads to (ascending, last = L)")
    num_buckets: int = Field(
        description="history tokens: V buckets, or C memory slots (0 when the mode has none)"
    )
    bucket_size: int = Field(description="G: items kept per bucket (0: no buckets, the memory compressor)")
    compressor: str = Field("cause", description="cause (bucket tokens) | memory (folded memory, Rec2PM)")
    segment_len: int = Field(0, description="S: history events folded at a time (memory compressor)")
    d_model: int
    temperature: float = Field(description="scores are cosine similarities divided by this")
    index: dict[str, int | str] | None = Field(
        None, description="an approximate item index in the bundle (export.index), or none: exact scoring"
    )
    opset: int
    num_items: int
    num_actions: int
    num_categories: int
    user_hash_buckets: int = Field(description="rows of the hashed user-token table (model.user_hash)")
    files: dict[str, str] = Field(description="relative path -> sha256 of every file in the bundle")
    metrics: dict[str, float | int | str] = Field(default_factory=dict, description="the run's test metrics")
    train_config: dict[str, object] = Field(default_factory=dict)


class Catalog(BaseModel):
    """Id maps: internal id i (1-based) is position i - 1 of each list."""

    items: list[str]
    item_categories: list[list[int]] = Field(description="per item: internal category ids (1..C)")
    categories: list[str]
    actions: list[str]
    titles: list[str] = Field(default_factory=list, description="per item, where the dataset has them")
