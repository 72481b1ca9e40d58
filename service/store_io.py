"""What every part of the store shares: the client, the bounds, one round trip with its timeout, and
how a stored value that cannot be read is treated (service.store reads and appends, service.fold
compacts; both through this)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from service.errors import StoreUnavailable, UserStateCorrupt
from service.keyed_locks import KeyedLocks
from service.store_codec import CorruptValue, State, UserKeys, decode_events, decode_state, user_keys
from service.store_types import Counters
from service.user_state import LayoutMismatch, ModelView, check_layout

T = TypeVar("T")


class StoreIO:
    def __init__(
        self,
        redis: Redis,
        prefix: str = "causerec",
        dedup_retention_s: int = 86_400,
        derived_ttl_s: int = 7 * 86_400,
        answers_ttl_s: int = 0,
        user_ttl_s: int = 0,
        max_buckets: int | None = None,
        max_history: int | None = None,
        max_retries: int = 50,
        timeout_s: float = 30.0,
        fold_after: int = 16,
    ) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.dedup_retention_s = dedup_retention_s
        self.user_ttl_s = user_ttl_s  # 0: a user's state never expires
        # Derived values never outlive the state: a user forgotten and back again starts at seq 0,
        # and must not meet tokens stamped with the seqs of the previous life.
        self.derived_ttl_s = min(derived_ttl_s, user_ttl_s) if user_ttl_s else derived_ttl_s
        self.answers_ttl_s = min(answers_ttl_s, self.derived_ttl_s) if answers_ttl_s else 0  # 0: none kept
        self.max_buckets = max_buckets  # categories kept per user (None: all)
        self.max_history = max_history  # memory compressor: raw history events kept (None: all)
        self.max_retries = max_retries
        # An append folds a user's log into the state once it holds this many events (a read folds
        # whatever it finds): the log's length bounds what a read may have to fold.
        self.fold_after = fold_after
        self.counters = Counters()
        # Folds of one user from this process wait for each other here instead of wasting
        # compare-and-set round trips on Redis; other processes and replicas are kept apart by
        # the compare-and-set itself.
        self.user_locks = KeyedLocks()

    def keys(self, user_id: str) -> UserKeys:
        return user_keys(self.prefix, user_id)

    def writes(self) -> Any:
        """A pipeline for one round trip of writes. On a single node it is a MULTI/EXEC: under
        ``appendfsync always`` Redis fsyncs its AOF once per event-loop pass, and it reads a large
        pipeline in 16 KB passes, so a plain pipeline of a round's writes costs an fsync per 16 KB
        where EXEC costs one (docs/PERFORMANCE.md, bench-events). Each script's outcome stays per
        user: it decides for its own user. A cluster cannot run one transaction across slots, so
        there each script is its own."""
        return self.redis.pipeline(transaction=not isinstance(self.redis, RedisCluster))

    async def io(self, pipe: Any) -> list[Any]:
        """One round trip, bounded by ``timeout_s``: Redis time only, never the computation between
        round trips, so a large batch is not mistaken for a slow Redis."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]
        except TimeoutError:
            raise StoreUnavailable(
                f"redis did not answer within {self.timeout_s}s; an append may have been applied: "
                "retry with the same event_ids"
            ) from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.ping()
        except TimeoutError:
            raise StoreUnavailable(f"redis did not answer within {self.timeout_s}s") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from None

    def usable_state(self, model: ModelView, user_id: str, blob: bytes) -> State:
        """The user's state, or UserStateCorrupt (an unreadable one is counted: it is the truth and
        cannot be rebuilt) when it cannot be read or has another layout than ``model``'s."""
        try:
            state = decode_state(blob)
            check_layout(state, model)
        except (CorruptValue, LayoutMismatch) as exc:
            self.counters.corrupt_states += isinstance(exc, CorruptValue)
            raise UserStateCorrupt(f"stored state of user {user_id!r} is unusable: {exc}") from None
        return state

    def decoded(self, blob: bytes | None, decode: Callable[[bytes], T], kind: str) -> T | None:
        """A derived value, or None when it is missing or unreadable (then counted: it is rebuilt
        from the state like a missing one)."""
        if not blob:
            return None
        try:
            return decode(blob)
        except CorruptValue:
            self.counters.repaired(kind)
            return None

    def history(self, blob: bytes | None) -> list:  # type: ignore[type-arg]
        """The memory compressor's raw history (empty when missing or unreadable: a refold then
        starts from what the state still holds)."""
        if not blob or isinstance(blob, Exception):
            return []
        try:
            return decode_events(blob)
        except CorruptValue:
            self.counters.repaired("history")
            return []
