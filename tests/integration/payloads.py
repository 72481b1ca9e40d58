"""Request bodies the integration tests post."""

from __future__ import annotations


def events_body(user: str, items: list[str], t0: int = 1000) -> dict[str, list[dict[str, object]]]:
    """One `view` per item, one second apart from ``t0``, each with an event id."""
    return {
        "events": [
            {
                "user_id": user,
                "item_id": i,
                "action": "view",
                "timestamp": t0 + n,
                "event_id": f"{user}-{t0 + n}",
            }
            for n, i in enumerate(items)
        ]
    }
