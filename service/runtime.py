"""A loaded model: bundle + ONNX Runtime engine + the view of it the store needs (store ids mapped to
the bundle's). Swapped whole on reload."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import ids
from service.bundle import Bundle, load_bundle
from service.engine import Engine
from service.errors import StoreUnavailable
from service.memory_store import MemoryView
from service.store import ensure_layout
from service.user_state import ModelView


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    engine: Engine
    view: ModelView

    @property
    def version(self) -> str:
        return self.bundle.version


def load_engine(
    path: str | Path,
    device: str = "auto",
    intra_op_threads: int = 1,
    warmup: bool = True,
    retrieval: str = "exact",
    index_ef: int | None = None,
) -> Engine:
    """Load, check and warm a bundle's graphs; raises BundleError with a clear message if anything is off."""
    engine = Engine(load_bundle(path), device, intra_op_threads, retrieval=retrieval, index_ef=index_ef)
    if warmup:
        engine.warmup()
    return engine


def make_view(engine: Engine, mapped: ids.StoreIds) -> ModelView:
    bundle = engine.bundle
    m = bundle.manifest
    cat_store = mapped.categories.to_store
    by_item: dict[int, tuple[int, ...]] = {
        int(mapped.items.to_store[i]): tuple(int(cat_store[c]) for c in cats)
        for i, cats in enumerate(bundle.catalog.item_categories, start=1)
    }
    internal_cats = mapped.categories.to_internal.tolist()
    far = len(internal_cats) + 1  # categories this bundle does not know rank after its own
    # Every store category's rank, looked up per bucket on each append: a list, not numpy scalars.
    ranks = [0] + [known or far + sid for sid, known in enumerate(internal_cats[1:], start=1)]

    def category_order(sid: int) -> int:
        return ranks[sid] if 0 <= sid < len(ranks) else far + sid

    return ModelView(
        version=m.version,
        recent_len=m.recent_len,
        num_buckets=m.num_buckets,
        bucket_size=m.bucket_size,
        d_model=m.d_model,
        ids=mapped,
        categories_of=lambda item: by_item.get(item, ()),
        category_order=category_order,
        bucket_tokens=engine.bucket_tokens,
        memory=(
            MemoryView(m.segment_len, engine.initial_memory, engine.fold) if bundle.uses_memory else None
        ),
    )


async def load_model(
    path: str | Path,
    redis: Redis,
    prefix: str,
    device: str = "auto",
    intra_op_threads: int = 1,
    warmup: bool = True,
    retrieval: str = "auto",
    index_ef: int | None = None,
) -> LoadedModel:
    """The engine (in a thread), its catalogue registered in the store's ids, the store's layout
    checked against it: BundleError if the bundle cannot serve this store."""
    engine = await asyncio.to_thread(load_engine, path, device, intra_op_threads, warmup, retrieval, index_ef)
    catalog = engine.bundle.catalog
    try:
        mapped = await ids.map_catalogue(redis, prefix, catalog.items, catalog.actions, catalog.categories)
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(
            f"redis unavailable while mapping the catalogue: {type(exc).__name__}"
        ) from None
    view = await asyncio.to_thread(make_view, engine, mapped)
    await ensure_layout(redis, prefix, view)
    return LoadedModel(engine.bundle, engine, view)
