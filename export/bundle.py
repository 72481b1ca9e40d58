"""Run directory -> versioned, self-contained model bundle (see model.bundle_format)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.graphs import export_encoder_graph, export_fold_graph, export_history_graph
from export.index import build_index
from export.scorer import export_scorer_graph
from model.bundle_format import (
    CATALOG,
    ENCODER_GRAPH,
    FOLD_GRAPH,
    FORMAT_VERSION,
    HISTORY_GRAPH,
    INDEX_FILE,
    MANIFEST,
    MEMORY_INIT,
    OPSET,
    SCORER_GRAPH,
    Manifest,
    file_sha256,
)
from model.train import load_model


def length_buckets(recent_len: int, smallest: int = 8) -> list[int]:
    """Powers of two up to L, then L: few distinct shapes, little padding for short histories."""
    out, n = [], smallest
    while n < recent_len:
        out.append(n)
        n *= 2
    return [*out, recent_len]


INDEX_FROM_ITEMS = 200_000
"""``index="auto"`` builds the approximate index from this catalogue size on (bench_retrieval)."""


def export_bundle(run_dir: Path, out_dir: Path, index: str = "auto") -> Manifest:
    """Write the bundle for ``run_dir`` into ``out_dir`` (replaced atomically if it exists).
    ``index``: "auto" (an approximate item index for catalogues of INDEX_FROM_ITEMS or more),
    "always" or "never"."""
    model = load_model(run_dir)
    cfg = model.cfg
    metrics: dict[str, Any] = {}
    run_metrics = run_dir / "metrics.json"
    if run_metrics.is_file():
        test = json.loads(run_metrics.read_text()).get("test", {})
        metrics = {k: v for k, v in test.items() if isinstance(v, int | float | str)}
    run_info = json.loads((run_dir / "run.json").read_text())

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir.parent))
    try:
        export_encoder_graph(model, staging / ENCODER_GRAPH)
        export_scorer_graph(model, staging / SCORER_GRAPH)
        if cfg.uses_memory:
            export_fold_graph(model, staging / FOLD_GRAPH)
            np.save(staging / MEMORY_INIT, model.compressor.initial.detach().numpy().astype(np.float32))
        elif cfg.mode == "cause":
            export_history_graph(model, staging / HISTORY_GRAPH)
        shutil.copy(run_dir / CATALOG, staging / CATALOG)
        index_entry = None
        if index == "always" or (index == "auto" and cfg.num_items >= INDEX_FROM_ITEMS):
            with torch.no_grad():
                items = model.scoring_table()[1:].numpy()
            index_entry = build_index(items, staging / INDEX_FILE)
        files = {p.name: file_sha256(p) for p in sorted(staging.iterdir())}
        version = hashlib.sha256("".join(f"{n}:{h}" for n, h in files.items()).encode()).hexdigest()[:16]
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            version=version,
            created_at=datetime.now(UTC).isoformat(),
            mode=cfg.mode,
            token_layout=cfg.token_layout,
            recent_len=cfg.recent_len,
            length_buckets=length_buckets(cfg.recent_len),
            num_buckets=cfg.history_tokens,
            bucket_size=0 if cfg.uses_memory else cfg.bucket_size,
            compressor=cfg.compressor if cfg.mode == "cause" else "cause",
            segment_len=cfg.segment_len if cfg.uses_memory else 0,
            d_model=cfg.d_model,
            temperature=cfg.temperature,
            index=index_entry,
            opset=OPSET,
            num_items=cfg.num_items,
            num_actions=cfg.num_actions,
            num_categories=cfg.num_categories,
            user_hash_buckets=cfg.user_hash_buckets,
            files=files,
            metrics=metrics,
            train_config=run_info.get("train", {}),
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        # mkdtemp makes the folder 0700: a serving container running as another user could not read
        # a mounted bundle. Bundles hold no secrets; publish them world-readable.
        staging.chmod(0o755)
        for file in staging.iterdir():
            file.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
