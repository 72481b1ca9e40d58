"""Request and response bodies (the OpenAPI schema at /docs is generated from these)."""

from __future__ import annotations

import math
from typing import Annotated, Any

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
    exclude_seen: bool = Field(
        True, description="leave out items in the user's stored recent window and buckets"
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str
    model_version: str
    items: list[ScoredItem]
    recent_events: int = Field(description="events in the user's recent window used as input")
    history_tokens: int = Field(description="compressed history tokens used as input")


class EventIn(Strict):
    user_id: Id
    item_id: Id
    action: Id = Field(description="action value as in the training data (e.g. 'like', or a rating '4')")
    timestamp: float | None = Field(None, description="seconds since the epoch; default: server time")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="idempotency key: a repeat within the retention window is counted once"
    )


class EventsRequest(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class InvalidEvent(BaseModel):
    index: int
    reason: str


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    invalid: list[InvalidEvent] = Field(default_factory=list)


class ReloadRequest(Strict):
    bundle: str | None = Field(None, description="bundle directory; default: the configured one")


class Problem(BaseModel):
    """Every error response has this shape."""

    detail: Any
    request_id: str | None = None
