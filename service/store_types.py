"""What the store returns and counts (service.store does the I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.store_codec import Query, State, Tokens, UserKeys

if TYPE_CHECKING:
    from service.store_fold import PendingFold


@dataclass
class UserRead:
    """One user's state as a read found it (derived state already made fresh where possible)."""

    user_id: str
    keys: UserKeys
    state: State | None  # None: unknown user
    tokens: Tokens | None = None  # fresh for the model, or None (no history)
    query: Query | None = None  # fresh for the state, or None (the backbone must run)
    error: Exception | None = None  # this user could not be read; the others are unaffected
    head: bytes = b""
    # The read folded this user's logged events but did not write the fold: Store.write_derived
    # writes it first, in the round trip that writes what was derived from it.
    fold: PendingFold | None = None


@dataclass
class UserOutcome:
    """One user's append: applied (accepted / duplicates) or failed (``error``)."""

    user_id: str
    accepted: int = 0
    duplicates: int = 0
    error: Exception | None = None


@dataclass
class Inspected:
    """One user's stored state for display (GET /users/{id})."""

    state: State
    tokens: Tokens | None  # fresh for the served model, else None
    query_cached: bool
    stored_bytes: dict[str, int]  # MEMORY USAGE of each existing key


@dataclass
class Counters:
    """What the store did, for /metrics and for tests that check the work done."""

    conflicts: int = 0  # fold scripts that found the state moved (then retried)
    folds_deferred: int = 0  # users whose full log an append left to a later fold (too many running)
    token_builds: int = 0  # users whose history tokens were (re)built on a read
    repairs: dict[str, int] = field(default_factory=dict)  # unreadable derived values rebuilt, by kind
    corrupt_states: int = 0  # unreadable states (the truth: cannot be rebuilt)

    def repaired(self, kind: str) -> None:
        self.repairs[kind] = self.repairs.get(kind, 0) + 1
