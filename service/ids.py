"""Stable store ids: the numbers Redis keeps for items, actions and categories.

A bundle numbers its catalogue by first appearance in its training data, so two bundles trained on
refreshed data give the same item different internal ids. The store never keeps those: every
external id gets a store id (1, 2, ...) the first time any bundle registers it, in one Redis hash
shared by every replica (assigned atomically by a script, so concurrent registrations agree), and
each loaded bundle maps store ids to its own internal ids. Ids a bundle does not know map to a
negative placeholder (-store id) that round-trips through the state unchanged; the model sees
them as padding (items) or as the no-category bucket (categories).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from redis.asyncio import Redis

from model.bundle_format import Catalog
from service.errors import BundleError
from service.store_codec import ids_key

KINDS = ("item", "action", "category")
_CHUNK = 10_000  # ids per round trip when a bundle registers its catalogue

# KEYS[1]: the ids hash. ARGV[1]: kind letter, ARGV[2..]: external ids. Fields: "<k>:<external>" ->
# store id, "<k>#<store id>" -> external (for display), "#<k>" -> the last store id given out.
REGISTER = """
local out = {}
for i = 2, #ARGV do
  local field = ARGV[1] .. ':' .. ARGV[i]
  local sid = redis.call('HGET', KEYS[1], field)
  if not sid then
    sid = redis.call('HINCRBY', KEYS[1], '#' .. ARGV[1], 1)
    redis.call('HSET', KEYS[1], field, sid, ARGV[1] .. '#' .. sid, ARGV[i])
  end
  out[#out + 1] = tonumber(sid)
end
return out
"""


@dataclass(frozen=True)
class Numbering:
    """One kind's store id <-> a bundle's internal id (1-based; 0 is padding)."""

    to_store: np.ndarray  # (n + 1,) int64: internal -> store id; [0] = 0
    to_internal: np.ndarray  # (max store id + 1,) int64: store id -> internal, 0 if unknown

    def internal(self, sids: np.ndarray) -> np.ndarray:
        """Store ids -> internal ids, unknown ones -> -store id (a placeholder that round-trips)."""
        sids = np.asarray(sids, np.int64)
        known = np.zeros(len(sids), np.int64)
        inside = sids < len(self.to_internal)
        known[inside] = self.to_internal[sids[inside]]
        return np.where(known > 0, known, -sids)

    def store(self, internal: np.ndarray) -> np.ndarray:
        """Internal ids (or placeholders) -> store ids."""
        internal = np.asarray(internal, np.int64)
        return np.where(internal > 0, self.to_store[np.maximum(internal, 0)], -internal)

    def known(self, sids: np.ndarray) -> np.ndarray:
        """Bool mask of the store ids this bundle has."""
        sids = np.asarray(sids, np.int64)
        out = np.zeros(len(sids), bool)
        inside = sids < len(self.to_internal)
        out[inside] = self.to_internal[sids[inside]] > 0
        return out


@dataclass(frozen=True)
class StoreIds:
    items: Numbering
    actions: Numbering
    categories: Numbering


def in_catalogue_order(catalog: Catalog) -> StoreIds:
    """The numbering a bundle gets from an empty store (store id = internal id): for offline use of
    an engine, and what the first bundle of every store maps to."""
    return StoreIds(
        *(
            _numbering(np.arange(1, n + 1))
            for n in (len(catalog.items), len(catalog.actions), len(catalog.categories))
        )
    )


async def _resolve(redis: Redis, key: str, kind: str, externals: list[str]) -> np.ndarray:
    """Store ids of ``externals``, registering the new ones."""
    letter = kind[0]
    out = np.zeros(len(externals), np.int64)
    for lo in range(0, len(externals), _CHUNK):
        chunk = externals[lo : lo + _CHUNK]
        found = await redis.hmget(key, [f"{letter}:{e}" for e in chunk])  # type: ignore[misc]
        missing = [j for j, v in enumerate(found) if v is None]
        for j, v in enumerate(found):
            if v is not None:
                out[lo + j] = int(v)
        if missing:
            sids = await redis.eval(REGISTER, 1, key, letter, *[chunk[j] for j in missing])  # type: ignore[misc]
            out[[lo + j for j in missing]] = sids
    return out


def _numbering(sids: np.ndarray) -> Numbering:
    to_store = np.concatenate([[0], sids]).astype(np.int64)
    to_internal = np.zeros(int(to_store.max()) + 1, np.int64)
    to_internal[to_store[1:]] = np.arange(1, len(to_store))
    return Numbering(to_store, to_internal)


async def map_catalogue(
    redis: Redis, prefix: str, items: list[str], actions: list[str], categories: list[str]
) -> StoreIds:
    """Register a bundle's catalogue and return its numberings. Refuses (BundleError) a bundle that
    lacks actions or categories the store already holds: stored buckets and actions would then mean
    nothing to it. Items may come and go (catalogue churn); the unknown ones are ignored by the model."""
    key = ids_key(prefix)
    held = {kind: int(await redis.hget(key, f"#{kind[0]}") or 0) for kind in ("action", "category")}  # type: ignore[misc]
    mapped = StoreIds(
        _numbering(await _resolve(redis, key, "item", items)),
        _numbering(await _resolve(redis, key, "action", actions)),
        _numbering(await _resolve(redis, key, "category", categories)),
    )
    for kind, numbering in (("action", mapped.actions), ("category", mapped.categories)):
        lacking = [s for s in range(1, held[kind] + 1) if not numbering.known(np.array([s]))[0]]
        if lacking:
            names = await redis.hmget(key, [f"{kind[0]}#{s}" for s in lacking[:3]])  # type: ignore[misc]
            shown = ", ".join(repr(n.decode() if isinstance(n, bytes) else n) for n in names)
            raise BundleError(
                f"the bundle lacks {len(lacking)} {kind}(ies) the store holds (e.g. {shown}); a store "
                "whose actions or categories change needs a new key prefix and a backfill"
            )
    return mapped


async def externals(redis: Redis, prefix: str, kind: str, sids: list[int]) -> list[str | None]:
    """External ids of store ids (for display of ids the serving bundle does not know)."""
    if not sids:
        return []
    found = await redis.hmget(ids_key(prefix), [f"{kind[0]}#{s}" for s in sids])  # type: ignore[misc]
    return [v.decode() if isinstance(v, bytes) else v for v in found]
