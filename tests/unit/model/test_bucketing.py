"""The one bucketing rule: batch form == incremental form, and the rule's visible properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from model.bucketing import UNCATEGORIZED, Event, UserState, bucketize, split_recent

CATS = {1: (1,), 2: (2,), 3: (1, 2), 4: (), 5: (3,), 6: (1, 3), 7: (4,), 8: (5,)}


def categories_of(item: int) -> tuple[int, ...]:
    return CATS[item]


streams = st.lists(st.tuples(st.integers(0, 30), st.sampled_from(sorted(CATS))), max_size=120)


@settings(max_examples=300, deadline=None)
@given(
    stream=streams,
    recent_len=st.integers(0, 10),
    num_buckets=st.integers(1, 6),
    bucket_size=st.integers(1, 5),
)
def test_incremental_equals_batch(stream, recent_len, num_buckets, bucket_size):  # type: ignore[no-untyped-def]
    """Random streams with many timestamp ties and out-of-order arrivals."""
    events = [Event(ts, seq, item, 1) for seq, (ts, item) in enumerate(stream)]
    state = UserState(recent_len, bucket_size)
    for e in events:
        state.append(e, categories_of)
    history, recent = split_recent(events, recent_len)
    assert state.recent == recent
    assert state.top(num_buckets) == bucketize(history, categories_of, num_buckets, bucket_size)


def test_buckets_rank_by_newest_item_and_keep_the_newest_g() -> None:
    history = [
        Event(10, 0, 1, 1),
        Event(20, 1, 2, 1),
        Event(30, 2, 1, 1),
        Event(40, 3, 1, 1),
        Event(35, 4, 5, 1),
    ]
    buckets = bucketize(history, categories_of, num_buckets=2, bucket_size=2)
    assert [b.category for b in buckets] == [
        1,
        3,
    ]  # cat 1 newest at ts 40, cat 3 at 35; cat 2 (ts 20) dropped
    assert buckets[0].items == (1, 1)
    assert buckets[0].keys == ((40, 3), (30, 2))


def test_many_to_many_and_uncategorized() -> None:
    buckets = bucketize([Event(5, 0, 3, 1), Event(6, 1, 4, 1)], categories_of, num_buckets=8, bucket_size=4)
    assert [b.category for b in buckets] == [UNCATEGORIZED, 1, 2]  # item 4 has none; item 3 is in 1 and 2
    assert all(b.items for b in buckets)


def test_out_of_order_event_goes_straight_to_history() -> None:
    state = UserState(recent_len=2, bucket_size=4)
    for e in [Event(100, 0, 1, 1), Event(200, 1, 2, 1)]:
        assert state.append(e, categories_of) == set()
    late = Event(50, 2, 5, 1)  # older than the whole window
    assert state.append(late, categories_of) == {3}
    assert [e.ts for e in state.recent] == [100, 200]


def test_ties_are_broken_by_arrival() -> None:
    history, recent = split_recent([Event(7, 0, 1, 1), Event(7, 1, 2, 1), Event(7, 2, 5, 1)], 1)
    assert [e.item for e in recent] == [5]
    assert [e.item for e in history] == [1, 2]
