"""CAUSE steps 1-2: split a user's events into a recent window and a long-term history, and
group that history into category buckets.

This is the one definition of the rule. Training, export and the Redis store all import it, and it
imports neither torch nor numpy, so the serving path can use it as is.

Order: events are totally ordered by their key ``(ts, seq)``. ``seq`` is a per-user arrival counter,
so equal timestamps are broken by arrival, and an event that arrives late with an old timestamp
takes its place by timestamp ("out of order is handled by the rule, not ignored").

Rule, for window length L, V buckets of G items:
  * recent window = the L events with the largest keys; history = all the others;
  * every history event goes into the bucket of each of its item's categories (many-to-many), or
    into the reserved ``UNCATEGORIZED`` bucket when the item has none;
  * a bucket keeps its G largest keys (newest first);
  * buckets are ranked by their newest key (descending), ties by category id (ascending), and the
    first V are the user's history buckets.

``bucketize`` is the batch form; ``UserState`` the incremental one. Both give the same buckets for
any event stream (property-tested), which is what lets the store update one event at a time.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

UNCATEGORIZED = 0
"""Category id of the reserved bucket for items that have no category."""

CategoriesOf = Callable[[int], Sequence[int]]
"""Maps an internal item id to its category ids (empty when it has none)."""


class Event(NamedTuple):
    ts: int  # seconds since the epoch
    seq: int  # per-user arrival counter: breaks timestamp ties, unique per user
    item: int  # internal item id (>= 1)
    action: int  # internal action id (>= 1)

    @property
    def key(self) -> tuple[int, int]:
        return (self.ts, self.seq)


@dataclass(frozen=True)
class Bucket:
    category: int
    items: tuple[int, ...]  # newest first, at most G
    keys: tuple[tuple[int, int], ...]  # (ts, seq) of each item, newest first

    @property
    def newest(self) -> tuple[int, int]:
        return self.keys[0]


Entry = tuple[tuple[int, int], int]
"""One bucket entry: ((ts, seq), item)."""

CategoryOrder = Callable[[int], int]
"""Breaks ties between buckets with the same newest key (one event in several categories): the
lower value ranks first. Training ranks by the catalogue's category id; the store, which keeps its
own stable ids, passes the served bundle's numbering so both rank alike."""


def _ranked(newest: Iterable[tuple[tuple[int, int], int]], order: CategoryOrder | None = None) -> list[int]:
    """Categories of (newest key, category) pairs, most recently active first, ties by category (or
    ``order``). Plain tuples, no key function: the store ranks all of a user's buckets per event."""
    by = order or int
    keyed = [(-ts, -seq, by(cat), cat) for (ts, seq), cat in newest]
    keyed.sort()
    return [row[3] for row in keyed]


def bucket_categories(item: int, categories_of: CategoriesOf) -> Sequence[int]:
    cats = categories_of(item)
    return cats if len(cats) else (UNCATEGORIZED,)


def split_recent(events: Iterable[Event], recent_len: int) -> tuple[list[Event], list[Event]]:
    """Return (history, recent), each oldest first; recent holds the ``recent_len`` newest events."""
    ordered = sorted(events, key=lambda e: e.key)
    cut = max(0, len(ordered) - recent_len)
    return ordered[:cut], ordered[cut:]


def bucketize(
    history: Iterable[Event], categories_of: CategoriesOf, num_buckets: int, bucket_size: int
) -> list[Bucket]:
    """Batch form: the at most ``num_buckets`` history buckets, most recently active first."""
    grouped: dict[int, list[Event]] = {}
    for event in history:
        for cat in bucket_categories(event.item, categories_of):
            grouped.setdefault(cat, []).append(event)
    buckets = []
    for cat, events in grouped.items():
        newest = sorted(events, key=lambda e: e.key, reverse=True)[:bucket_size]
        buckets.append(Bucket(cat, tuple(e.item for e in newest), tuple(e.key for e in newest)))
    by_category = {b.category: b for b in buckets}
    return [by_category[c] for c in _ranked((b.newest, b.category) for b in buckets)[:num_buckets]]


@dataclass
class UserState:
    """Incremental form: a user's recent window and every bucket they have touched.

    By default every touched bucket is kept, not only the top V: an out-of-order event can make any
    bucket active again, and it must then hold exactly what the batch form would. ``max_buckets``
    bounds the memory instead: past it, the least recently active bucket is dropped, so a category
    that comes back after ``max_buckets`` others restarts empty (a bounded store; the difference
    from the batch form is measured in docs/STORE.md).
    """

    recent_len: int
    bucket_size: int
    max_buckets: int | None = None
    order: CategoryOrder | None = None  # tie-break between buckets (default: the category id)
    recent: list[Event] = field(default_factory=list)  # oldest first, at most recent_len
    # category -> entries oldest first, at most bucket_size. A bucket is replaced, never edited in
    # place, and ranking reads only its newest entry: the store hands in read-only buckets that
    # decode lazily (service.store_codec.PackedBucket), so an event costs the one bucket it touches.
    # A bucket with a ``pushed(entry, limit)`` method returns itself with ``entry`` (newer than all
    # of it) added and the oldest dropped past ``limit``: what the list path below computes.
    buckets: MutableMapping[int, Sequence[Entry]] = field(default_factory=dict)

    def append(self, event: Event, categories_of: CategoriesOf) -> set[int]:
        """Add one event; return the categories whose bucket content changed."""
        evicted = self.push_recent(event)
        return set() if evicted is None else self.add_to_history(evicted, categories_of)

    def push_recent(self, event: Event) -> Event | None:
        """Put ``event`` in the recent window; return the event that leaves it for the history.

        That is the oldest event of a full window: possibly ``event`` itself, when it is older
        than the whole window (it then goes straight to the history).
        """
        bisect.insort(self.recent, event, key=lambda e: e.key)
        return self.recent.pop(0) if len(self.recent) > self.recent_len else None

    def add_to_history(self, event: Event, categories_of: CategoriesOf) -> set[int]:
        """Put a history event into its buckets; return the categories whose content changed."""
        touched = set()
        for cat in bucket_categories(event.item, categories_of):
            stored = self.buckets.get(cat, ())
            pushed = getattr(stored, "pushed", None)
            if pushed is not None and event.key > stored[-1][0]:
                # Newer than the whole bucket (events arriving in time order): a stored bucket
                # appends it without being decoded (service.store_codec.PackedBucket).
                self.buckets[cat] = pushed((event.key, event.item), self.bucket_size)
                touched.add(cat)
                continue
            if len(stored) == self.bucket_size and event.key < stored[0][0]:
                continue  # older than everything a full bucket keeps: nothing changes
            bucket = list(stored)
            bisect.insort(bucket, (event.key, event.item))
            if len(bucket) > self.bucket_size:
                del bucket[0]
            self.buckets[cat] = bucket
            touched.add(cat)
        if self.max_buckets is not None and len(self.buckets) > self.max_buckets:
            for dropped in self.ranked_categories()[self.max_buckets :]:
                del self.buckets[dropped]
                touched.discard(dropped)
        return touched

    def ranked_categories(self) -> list[int]:
        """Every non-empty bucket's category, most recently active first."""
        return _ranked(((b[-1][0], cat) for cat, b in self.buckets.items() if b), self.order)

    def top(self, num_buckets: int) -> list[Bucket]:
        """The history buckets, exactly as ``bucketize`` gives them for the same events."""
        out = []
        for cat in self.ranked_categories()[:num_buckets]:
            keys, items = zip(*reversed(self.buckets[cat]), strict=True)
            out.append(Bucket(cat, items, keys))
        return out
