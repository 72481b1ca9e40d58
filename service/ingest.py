"""/events: validate a whole batch against the model's catalogue and map it to store ids.

A batch with any invalid event is rejected whole (422 listing every bad index and why) and writes
nothing. A valid batch is then applied atomically per user (service.store), not across users;
event_id makes the retry of any failed or unanswered request safe.
"""

from __future__ import annotations

import math

from service.errors import InvalidEvents
from service.runtime import LoadedModel
from service.schemas import EventIn, InvalidEvent
from service.store_codec import MAX_U32
from service.user_state import NewEvent


def validate_events(
    model: LoadedModel, events: list[EventIn], now: float, max_future_s: int
) -> list[NewEvent]:
    bundle = model.bundle
    valid, invalid = [], []
    for index, e in enumerate(events):
        item = bundle.item_index.get(e.item_id)
        action = bundle.action_index.get(e.action)
        ts = now if e.timestamp is None else e.timestamp
        reason = None
        if item is None:
            reason = f"unknown item_id {e.item_id[:64]!r}: not in the model's catalogue"
        elif action is None:
            known = ", ".join(repr(a) for a in bundle.catalog.actions[:10])
            reason = f"unknown action {e.action[:64]!r}; known actions: {known}"
        elif not math.isfinite(ts):
            reason = "timestamp must be a finite number of seconds"
        elif ts < 0:
            reason = "timestamp must not be negative"
        elif ts > now + max_future_s:
            reason = f"timestamp is more than {max_future_s}s in the future"
        elif ts > MAX_U32:
            reason = f"timestamp must be below {MAX_U32 + 1} (2106-02-07)"
        if reason:
            invalid.append(InvalidEvent(index=index, reason=reason))
        else:
            ids = model.view.ids
            store_item, store_action = int(ids.items.to_store[item]), int(ids.actions.to_store[action])  # type: ignore[index]
            valid.append(NewEvent(e.user_id, store_item, store_action, int(ts), e.event_id))
    if invalid:
        raise InvalidEvents(invalid)
    return valid
