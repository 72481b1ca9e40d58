"""Request and response bodies (the OpenAPI schema at /docs is generated from these)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema


def _id_text(value: Any) -> Any:
    """Ids may be JSON strings or integers; both name the same entity ("42" == 42)."""
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, not a boolean")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = str(int(value))
    if isinstance(value, str):
        if not 1 <= len(value) <= MAX_ID_CHARS:
            raise ValueError(f"must be 1 to {MAX_ID_CHARS} characters long, got {len(value)}")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain control characters")
    return value


MAX_ID_CHARS = 256
# The published schema states what _id_text enforces, so generated clients (and fuzzers) know it.
Id = Annotated[
    str,
    BeforeValidator(_id_text),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_ID_CHARS,
                    "pattern": "^[^\\x00-\\x1f\\x7f]+$",
                },
                {"type": "integer"},
            ]
        }
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Strict):
    user_id: Id = Field(description="external user id (string or integer, at most 256 characters)")
    k: int = Field(20, ge=1, le=1000, description="number of items to return")
    include: list[Literal["title", "categories"]] = Field(
        default_factory=list, description="item metadata to add to each recommended item"
    )
    exclude_seen: bool = Field(
        True,
        description="leave out the items the model reads for this user: the recent window's, and those of "
        "its history tokens (the G newest items of each of the V buckets; for the memory compressor the "
        "256 newest distinct history items). Older history is not excluded.",
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float
    title: str | None = Field(None, description="with include=['title'], where the catalogue has titles")
    categories: list[str] | None = Field(None, description="with include=['categories']")


class StoredEvent(BaseModel):
    item_id: str
    action: str
    timestamp: int
    title: str | None = None
    categories: list[str] = Field(default_factory=list)
    known: bool = Field(
        description="whether the served model knows this item (unknown ones are kept, not used)"
    )


class StoredBucket(BaseModel):
    category: str
    items: int = Field(description="items kept (at most G), newest first below")
    newest_timestamp: int
    in_history_tokens: bool = Field(description="one of the V buckets the model reads")
    recent_items: list[StoredEvent] = Field(description="its items, newest first")


class UserState(BaseModel):
    """A user's stored state as the served model sees it."""

    user_id: str
    model_version: str
    events: int = Field(description="events ever accepted for this user")
    recent: list[StoredEvent] = Field(description="the recent window, oldest first")
    buckets: list[StoredBucket] = Field(description="the raw history buckets, most recently active first")
    history_events: int = Field(description="memory compressor: raw history events kept (0 for buckets)")
    history_tokens: int = Field(description="history tokens the model reads")
    history_tokens_fresh: bool = Field(description="stored tokens are current for the served model")
    query_cached: bool = Field(description="the query state is cached for the current events")
    stored_bytes: dict[str, int] = Field(description="Redis MEMORY USAGE per key of this user")


class RecommendResponse(BaseModel):
    user_id: str
    model_version: str
    items: list[ScoredItem]
    recent_events: int = Field(description="events in the user's recent window used as input")
    history_tokens: int = Field(description="compressed history tokens used as input")
    warnings: list[str] = Field(
        default_factory=list,
        description="anything that degraded this answer (e.g. an unreadable stored state)",
    )


class EventIn(Strict):
    user_id: Id
    item_id: Id
    action: Id = Field(description="action value as in the training data (e.g. 'like', or a rating '4')")
    timestamp: float | None = Field(None, description="seconds since the epoch; default: server time")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="idempotency key: a repeat within the retention window is counted once"
    )


class EventsRequest(Strict):
    events: list[EventIn] = Field(
        min_length=1,
        max_length=1000,
        description="applied in order; atomic per user, not across users. Send event_id with every "
        "event: then retrying a request after any 503 or timeout applies nothing twice",
    )


class InvalidEvent(BaseModel):
    index: int
    reason: str


class UserResult(BaseModel):
    user_id: str
    accepted: int = Field(description="events of this user applied now")
    duplicates: int = Field(description="events of this user whose event_id was already applied")
    error: str | None = Field(None, description="why this user's events were not applied (then none were)")


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    invalid: list[InvalidEvent] = Field(default_factory=list)
    users: list[UserResult] = Field(
        default_factory=list,
        description="per user: each user's events are applied all or none; users are independent",
    )


class ReloadRequest(Strict):
    bundle: str | None = Field(None, description="bundle directory; default: the configured one")


class Problem(BaseModel):
    """Every error response has this shape."""

    detail: Any
    request_id: str | None = None
