"""Backfill a dataset into Redis through the store's own append path (one rule, one code path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from model.data import Dataset
from service.config import Settings
from service.redis_client import connect
from service.runtime import load_model
from service.store import Store
from service.user_state import NewEvent

DEFAULT_MAX_HISTORY: int | None = Settings.model_fields["max_history"].default


async def backfill(
    bundle: Path,
    data: Dataset,
    redis_url: str,
    key_prefix: str,
    users_per_batch: int = 64,
    progress: bool = True,
    cluster: bool = False,
    max_categories: int | None = None,
    max_history: int | None = DEFAULT_MAX_HISTORY,
) -> dict[str, Any]:
    """Append every event of ``data`` (ids mapped through the bundle's catalogue); events whose item
    or action the model does not know are skipped and counted. The bounds are the service's
    (CAUSEREC_MAX_CATEGORIES, CAUSEREC_MAX_HISTORY), defaults included."""
    client = connect(redis_url, cluster=cluster)
    store = Store(client, prefix=key_prefix, max_buckets=max_categories, max_history=max_history)
    appended = skipped = 0
    try:
        model = await load_model(bundle, client, key_prefix, device="cpu")
        # dataset id -> bundle id -> store id (0: the bundle does not know it)
        ids = model.view.ids
        item_map = np.zeros(data.num_items + 1, np.int64)
        for i in range(1, data.num_items + 1):
            internal = model.bundle.item_index.get(data.items.external(i), 0)
            item_map[i] = ids.items.to_store[internal] if internal else 0
        action_map = np.zeros(len(data.actions) + 1, np.int64)
        for a in range(1, len(data.actions) + 1):
            internal = model.bundle.action_index.get(data.actions.external(a), 0)
            action_map[a] = ids.actions.to_store[internal] if internal else 0
        started = time.perf_counter()
        with Progress(disable=not progress) as bar:
            task = bar.add_task("loading events", total=data.num_users)
            for lo in range(0, data.num_users, users_per_batch):
                batch = []
                for row in range(lo, min(lo + users_per_batch, data.num_users)):
                    user = data.users.external(row + 1)
                    start, stop = int(data.user_offsets[row]), int(data.user_offsets[row + 1])
                    items, actions = item_map[data.item[start:stop]], action_map[data.action[start:stop]]
                    ok = (items > 0) & (actions > 0)
                    skipped += int((~ok).sum())
                    batch += [
                        NewEvent(user, int(i), int(a), int(t))
                        for i, a, t in zip(items[ok], actions[ok], data.ts[start:stop][ok], strict=True)
                    ]
                outcomes = await store.append(model.view, batch, now=time.time())
                failed = [o for o in outcomes if o.error is not None]
                if failed:
                    raise failed[0].error  # type: ignore[misc]
                appended += sum(o.accepted for o in outcomes)
                bar.advance(task, min(users_per_batch, data.num_users - lo))
    finally:
        await client.aclose()
    seconds = time.perf_counter() - started
    return {
        "users": data.num_users,
        "events": appended,
        "skipped": skipped,
        "seconds": round(seconds, 2),
        "events_per_s": round(appended / seconds, 1),
    }
