"""GET /users/{id}: a user's stored state in the served catalogue's words (ids, titles, genres)."""

from __future__ import annotations

import numpy as np

from service import ids
from service.runtime import LoadedModel
from service.schemas import StoredBucket, StoredEvent, UserState
from service.store import Store
from service.store_types import Inspected
from service.user_state import ranked_categories

SHOWN_PER_BUCKET = 32


async def describe(model: LoadedModel, store: Store, user_id: str, found: Inspected) -> UserState:
    view, bundle = model.view, model.bundle
    state = found.state
    buckets = view.memory is None and state.buckets
    sids = [e.item for e in state.recent] + [item for b in state.buckets.values() for _, item in b]
    internal = dict(zip(sids, view.ids.items.internal(np.array(sids, np.int64)).tolist(), strict=True))
    unknown = sorted({s for s, i in internal.items() if i <= 0})
    names = dict(zip(unknown, await ids.externals(store.redis, store.prefix, "item", unknown), strict=True))
    action_names = {
        a: bundle.catalog.actions[int(i) - 1] if i > 0 else f"#{a}" for a, i in _actions(model, state)
    }

    def event(item: int, action: int | None, ts: int) -> StoredEvent:
        i = internal[item]
        return StoredEvent(
            item_id=bundle.external_item(i) if i > 0 else names.get(item) or f"#{item}",
            action=action_names.get(action, "") if action is not None else "",
            timestamp=ts,
            title=bundle.title(i) if i > 0 else None,
            categories=bundle.category_names(i) if i > 0 else [],
            known=i > 0,
        )

    # The rule's own order (ties between categories included), so the V buckets shown first are
    # exactly the ones the history tokens read.
    order = ranked_categories(state, view)
    read = set(order[: view.num_buckets]) if buckets else set()
    ranked = [(c, state.buckets[c]) for c in order]
    cats = view.ids.categories.internal(np.array([c for c, _ in ranked], np.int64)).tolist()
    return UserState(
        user_id=user_id,
        model_version=model.version,
        events=state.next_seq,
        recent=[event(e.item, e.action, e.ts) for e in state.recent],
        buckets=[
            StoredBucket(
                category=bundle.catalog.categories[c - 1]
                if c > 0
                else ("(no category)" if cat == 0 else f"#{cat}"),
                items=len(entries),
                newest_timestamp=entries[-1][0][0],
                in_history_tokens=cat in read,
                recent_items=[
                    event(item, None, ts) for (ts, _), item in reversed(entries[-SHOWN_PER_BUCKET:])
                ],
            )
            for (cat, entries), c in zip(ranked, cats, strict=True)
        ],
        history_events=state.history_len,
        history_tokens=len(found.tokens.categories) if found.tokens is not None else 0,
        history_tokens_fresh=found.tokens is not None or not state.history_seq,
        query_cached=found.query_cached,
        stored_bytes=found.stored_bytes,
    )


def _actions(model: LoadedModel, state) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    sids = sorted({e.action for e in state.recent})
    return list(zip(sids, model.view.ids.actions.internal(np.array(sids, np.int64)).tolist(), strict=True))
