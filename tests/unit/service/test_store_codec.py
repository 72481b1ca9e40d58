"""Golden tests: the exact key strings and value bytes stored in Redis. Changing them breaks every
deployed store, so a change here must come with a new schema version and a migration. Each value
starts with a format byte (03 for the state, 02 for the others) and is pinned byte for byte, then
decoded back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.bucketing import Event, UserState
from service.store_codec import (
    FORMAT,
    KIND_BUCKETS,
    CorruptValue,
    MemoryRecord,
    PackedBucket,
    Query,
    State,
    Tokens,
    bucket_items,
    decode_events,
    decode_log,
    decode_memory,
    decode_query,
    decode_state,
    decode_tokens,
    encode_events,
    encode_log_records,
    encode_memory,
    encode_query,
    encode_state,
    encode_tokens,
    ids_key,
    keys_from_state,
    meta_key,
    state_head,
    state_layout,
    user_keys,
)

VERSION = "0123456789abcdef"


def test_key_layout_and_hash_tags() -> None:
    k = user_keys("causerec", "u42")
    assert (k.state, k.log, k.history, k.dedup) == (
        "causerec:v2:{u:u42}:state",
        "causerec:v2:{u:u42}:log",
        "causerec:v2:{u:u42}:hist",
        "causerec:v2:{u:u42}:dedup",
    )
    assert (k.tokens(VERSION), k.memory(VERSION), k.query(VERSION)) == (
        "causerec:v2:{u:u42}:tok:0123456789abcdef",
        "causerec:v2:{u:u42}:mem:0123456789abcdef",
        "causerec:v2:{u:u42}:q:0123456789abcdef",
    )
    assert (ids_key("causerec"), meta_key("causerec")) == ("causerec:v2:ids", "causerec:v2:meta")
    assert keys_from_state(k.state) == k


def test_unsafe_ids_are_hashed_so_braces_cannot_move_the_tag() -> None:
    k = user_keys("causerec", "a}b{c")
    assert k.state == "causerec:v2:{h:" + k.state.split("{h:")[1]
    assert "a}b" not in k.state
    assert user_keys("causerec", "x" * 129).state != user_keys("causerec", "x" * 130).state


STATE = State(
    KIND_BUCKETS,
    64,
    32,
    next_seq=3,
    history_seq=2,
    recent=[Event(1700000000, 2, 7, 1)],
    buckets={5: [((1699999990, -1), 9), ((1699999995, 1), 10)]},
)


def test_state_bytes() -> None:
    """Header (format, kind, L, G, counts, next seq, history seq, history length); the recent
    window: its oldest ts, then one packed_ints block (escape count, then uint16 columns: the ts
    gaps after the oldest, how far each seq is below next seq, items, actions; then the escaped
    values); per bucket (category, n, newest ts, seq and item) and a block of the older entries'
    gaps to the next entry and their items."""
    blob = encode_state(STATE)
    assert blob.hex() == (
        "03004000200001000100030000000200000000000000"
        "00f15365"
        "00000000"
        "010007000100"
        "050000000200fbf05365010000000a000000"
        "00000000"
        "05000900"
    )
    assert decode_state(blob) == STATE
    assert state_head(blob) == blob[:22]  # what the fold script compares: holds next seq
    assert state_layout(KIND_BUCKETS, 64, 32) == blob[1:6]  # what the log script checks


def test_log_bytes() -> None:
    """An event log: the format byte (written with the first record), then per accepted event its
    ts (u32), item and action (store ids, u32 and u16), oldest first; its seq is its place."""
    events = [(1700000000, 7, 1), (1700000005, 70000, 2)]
    blob = bytes([FORMAT]) + encode_log_records(events)
    assert blob.hex() == "0200f1536507000000010005f15365701101000200"
    assert decode_log(blob) == events


def test_format_2_states_are_still_read() -> None:
    """A store written before format 3 (fixed-width records) keeps its users: the old bytes decode
    to the same state, which is written back as format 3."""
    old = bytes.fromhex(
        "0200400020000100010003000000020000000000000000f153650200000007000000010005000000010000000200"
        "f6f0536509000000fbf053650a000000"
    )
    assert decode_state(old) == STATE
    assert encode_state(decode_state(old)) == encode_state(STATE)


@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=40),
    st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 2),  # below the state's next seq
            st.integers(1, 2**32 - 1),
            st.integers(1, 2**16 - 1),
        ),
        max_size=40,
    ),
)
def test_any_state_decodes_to_what_was_encoded(entries, events) -> None:  # type: ignore[no-untyped-def]
    """Every uint32 round-trips, escaped or not, at the extremes too (gaps of 2**32 - 1, seqs that
    go back)."""
    bucket = [((ts, -i), item) for i, (ts, item) in enumerate(sorted(entries))]
    bucket[-1] = ((bucket[-1][0][0], 2**32 - 1), bucket[-1][1])  # only the newest seq is stored
    recent = sorted((Event(*e) for e in events), key=lambda e: e.key)
    s = State(KIND_BUCKETS, 40, 40, 2**32 - 1, 7, 0, recent, {2**32 - 1: bucket})
    back = decode_state(encode_state(s))
    assert back.recent == recent
    assert [(ts, item) for (ts, _), item in back.buckets[2**32 - 1]] == [
        (ts, item) for (ts, _), item in bucket
    ]
    np.testing.assert_array_equal(bucket_items(back.buckets[2**32 - 1]), [item for _, item in bucket])


def test_decoded_buckets_keep_their_order_and_newest_key() -> None:
    """Only the newest entry's seq is stored; older ones get negative stand-ins that keep their
    order and sort below any real seq at the same timestamp."""
    s = State(KIND_BUCKETS, 8, 4, 40, 40, 0, [], {3: [((10, 7), 1), ((10, 9), 2), ((12, 30), 3)]})
    back = decode_state(encode_state(s)).buckets[3]
    assert back == [((10, -2), 1), ((10, -1), 2), ((12, 30), 3)]
    assert back == sorted(back)


def test_buckets_no_event_touched_are_written_back_as_read() -> None:
    """An append decodes and re-encodes only the buckets it changes: the others keep their bytes."""
    s = State(
        KIND_BUCKETS,
        1,
        2,
        9,
        9,
        0,
        [Event(30, 8, 4, 1)],
        {3: [((10, 1), 1), ((12, 2), 2)], 5: [((11, 3), 7)], 6: [((13, 4), 8), ((14, 5), 9)]},
    )
    blob = encode_state(s)
    back = decode_state(blob)
    assert all(isinstance(b, PackedBucket) for b in back.buckets.values())
    assert encode_state(back) == blob
    read = dict(back.buckets)
    rule = UserState(1, 2, recent=back.recent, buckets=back.buckets)
    assert rule.append(Event(31, 9, 6, 1), lambda item: (5,)) == {5}  # item 4 leaves the window
    assert [b is read[c] for c, b in back.buckets.items()] == [True, False, True]
    back.recent, back.next_seq = rule.recent, 10
    again = decode_state(encode_state(back))
    assert again.buckets == {
        3: [((10, -1), 1), ((12, 2), 2)],
        5: [((11, -1), 7), ((30, 8), 4)],
        6: [((13, -1), 8), ((14, 5), 9)],
    }
    assert rule.top(2)[0].items == (4, 7)  # bucket 5 is now the most recently active


def test_tokens_bytes() -> None:
    t = Tokens(VERSION, 7, np.array([3]), np.array([[50, 4]]), np.array([[0.5, -1.0]], np.float32))
    blob = encode_tokens(t)
    assert blob.hex() == (
        "023031323334353637383961626364656607000000010002000300000032000000040000000000003f000080bf00000000"
    )
    back = decode_tokens(blob)
    assert (back.version, back.history_seq) == (VERSION, 7)
    for a, b in [(back.categories, t.categories), (back.newest, t.newest), (back.tokens, t.tokens)]:
        np.testing.assert_array_equal(a, b)
    assert len(back.exclude) == 0


def test_query_bytes() -> None:
    q = Query(VERSION, 9, np.array([0.25, -2.0], np.float32))
    blob = encode_query(q)
    assert blob.hex() == "02303132333435363738396162636465660900000002000000803e000000c0"
    back = decode_query(blob)
    assert (back.version, back.next_seq, back.vector.tolist()) == (VERSION, 9, [0.25, -2.0])


def test_memory_and_history_bytes() -> None:
    m = MemoryRecord(VERSION, 7, 8, (60, 11), np.array([[1.0, 2.0]], np.float32), [Event(61, 12, 3, 2)])
    blob = encode_memory(m)
    assert blob.hex() == (
        "023031323334353637383961626364656607000000080000003c0000000b000000010002000100"
        "0000803f000000403d0000000c000000030000000200"
    )
    back = decode_memory(blob)
    assert (back.version, back.history_seq, back.folded, back.last_key) == (VERSION, 7, 8, (60, 11))
    assert back.open_events == m.open_events
    events = [Event(1, 2, 3, 4)]
    assert encode_events(events).hex() == "0100000002000000030000000400"
    assert decode_events(encode_events(events) * 2) == events * 2  # APPEND concatenates


@pytest.mark.parametrize(
    ("decode", "blob"),
    [
        (decode_state, b"\x01" + bytes(40)),  # a format this reader does not know
        (decode_state, bytes.fromhex("020040002000010000000300000002000000000000000000")),  # event missing
        (decode_state, encode_state(STATE)[:-1]),  # a bucket's block cut short
        (
            decode_state,
            encode_state(STATE)[:-8] + b"\x01\x00\x00\x00" + encode_state(STATE)[-4:],
        ),  # escape missing
        (decode_state, encode_state(STATE)[:30]),  # the recent window cut short
        (decode_state, encode_state(State(KIND_BUCKETS, 8, 4)) + b"x"),  # trailing bytes
        (decode_tokens, b""),
        (decode_query, encode_query(Query(VERSION, 1, np.zeros(4, np.float32)))[:-1]),
        (decode_memory, b"\x07"),
        (decode_events, b"\x00" * 13),
        (decode_log, b"\x02" + b"\x00" * 9),  # a record cut short
        (decode_log, b"\x03" + b"\x00" * 10),
    ],
)
def test_unreadable_values_are_refused_not_misread(decode, blob) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CorruptValue):
        decode(blob)


@given(
    st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 2**32 - 1)), min_size=1, max_size=12),
    st.integers(0, 2**31 - 1),
    st.integers(1, 2**32 - 1),
    st.integers(1, 12),
)
def test_a_stored_bucket_takes_a_newer_event_as_the_list_path_does(  # type: ignore[no-untyped-def]
    entries, later, item, limit
) -> None:
    """The rule appends an event newer than a whole stored bucket without decoding it
    (PackedBucket.pushed); the state written must be byte for byte the one the list path writes."""
    bucket = [((ts, i), it) for i, (ts, it) in enumerate(sorted(entries))][-limit:]
    newest_ts = bucket[-1][0][0]
    event = Event(newest_ts + later, 2**31, item, 1)  # the last seq given out: newer than the bucket

    def state(buckets):  # type: ignore[no-untyped-def]
        return State(KIND_BUCKETS, 1, limit, 2**31 + 1, 0, 0, [], buckets)

    states = []
    for stored in (decode_state(encode_state(state({9: bucket}))).buckets[9], list(bucket)):
        rule = UserState(1, limit, buckets={9: stored})
        assert rule.add_to_history(event, lambda _: (9,)) == {9}
        states.append(encode_state(state(rule.buckets)))
    assert isinstance(decode_state(states[0]).buckets[9], PackedBucket)
    assert states[0] == states[1]
