"""Golden tests: the exact key strings and value bytes stored in Redis. Changing them breaks every
deployed store, so a change here must come with a new schema version and a migration."""

from __future__ import annotations

import numpy as np

from model.bucketing import Event
from service.store_codec import (
    Recent,
    Tokens,
    decode_bucket,
    decode_recent,
    decode_tokens,
    encode_bucket,
    encode_recent,
    encode_tokens,
    user_keys,
)


def test_key_layout_and_hash_tags() -> None:
    k = user_keys("causerec", "u42")
    assert (k.recent, k.buckets, k.tokens, k.dedup) == (
        "causerec:v1:{u:u42}:recent",
        "causerec:v1:{u:u42}:buckets",
        "causerec:v1:{u:u42}:tok",
        "causerec:v1:{u:u42}:dedup",
    )


def test_unsafe_ids_are_hashed_so_braces_cannot_move_the_tag() -> None:
    k = user_keys("causerec", "a}b{c")
    assert k.recent == "causerec:v1:{h:" + k.recent.split("{h:")[1]
    assert "a}b" not in k.recent
    assert user_keys("causerec", "x" * 129).recent != user_keys("causerec", "x" * 130).recent


def test_recent_bytes() -> None:
    r = Recent(next_seq=3, history_seq=2, recent_len=64, bucket_size=32, events=[Event(1700000000, 2, 7, 1)])
    blob = encode_recent(r)
    assert blob.hex() == (
        "0103000000000000000200000000000000400000002000000000f153650000000002000000000000000700000001000000"
    )
    assert decode_recent(blob) == r


def test_bucket_bytes() -> None:
    entries = [((5, 1), 9), ((6, 2), 10)]
    blob = encode_bucket(entries)
    assert blob.hex() == ("0500000000000000010000000000000009000000060000000000000002000000000000000a000000")
    assert decode_bucket(blob) == entries


def test_tokens_round_trip_and_header() -> None:
    t = Tokens(
        "0123456789abcdef",
        7,
        np.array([3], np.int32),
        np.array([[50, 4]], np.int64),
        np.array([[9, 8]], np.int32),
        np.array([[0.5, -1.0]], np.float32),
    )
    blob = encode_tokens(t)
    assert blob[:1] == b"\x01"
    assert blob[1:17] == b"0123456789abcdef"
    assert len(blob) == 1 + 16 + 8 + 2 + 2 + 2 + 4 + 16 + 8 + 8
    back = decode_tokens(blob)
    assert (back.version, back.history_seq) == ("0123456789abcdef", 7)
    for a, b in [
        (back.categories, t.categories),
        (back.newest, t.newest),
        (back.items, t.items),
        (back.tokens, t.tokens),
    ]:
        np.testing.assert_array_equal(a, b)
