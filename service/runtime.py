"""A loaded model: bundle + ONNX Runtime engine + the view of it the store needs. Swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.bundle import Bundle, load_bundle
from service.engine import Engine
from service.memory_store import MemoryView
from service.store import ModelView


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    engine: Engine
    view: ModelView

    @property
    def version(self) -> str:
        return self.bundle.version


def load_model(
    path: str | Path, device: str = "auto", intra_op_threads: int = 1, warmup: bool = True
) -> LoadedModel:
    """Load, check and warm a bundle; raises BundleError with a clear message if anything is off."""
    bundle = load_bundle(path)
    engine = Engine(bundle, device=device, intra_op_threads=intra_op_threads)
    if warmup:
        engine.warmup()
    m = bundle.manifest
    view = ModelView(
        version=m.version,
        recent_len=m.recent_len,
        num_buckets=m.num_buckets,
        bucket_size=m.bucket_size,
        d_model=m.d_model,
        categories_of=bundle.categories_of,
        bucket_tokens=engine.bucket_tokens,
        memory=(
            MemoryView(m.segment_len, engine.initial_memory, engine.fold) if bundle.uses_memory else None
        ),
    )
    return LoadedModel(bundle, engine, view)
