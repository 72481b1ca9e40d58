"""Every Redis key and value format of the user-state store (schema version 1; docs/STORE.md).

Keys: all of one user's keys carry the hash tag ``{u:<id>}`` so they share one Redis Cluster slot
and can be updated in one MULTI/EXEC. Ids outside a safe character set (or too long) are replaced
by a hash, so a ``}`` in a user id can never move the tag.

    <prefix>:v1:{u:<id>}:recent    string  header + recent window (oldest first)
    <prefix>:v1:{u:<id>}:buckets   hash    category id -> that bucket's items (oldest first)
    <prefix>:v1:{u:<id>}:tok       string  history tokens of the top V buckets for one model version
    <prefix>:v1:{u:<id>}:dedup     zset    event id -> expiry time (idempotency window)

Values are little-endian numpy records. Each starts with a format byte so a reader refuses a
layout it does not know instead of misreading it.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

import numpy as np

from model.bucketing import Event

SCHEMA = 1
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")

EVENT = np.dtype([("ts", "<i8"), ("seq", "<i8"), ("item", "<i4"), ("action", "<i4")])
BUCKET_ITEM = np.dtype([("ts", "<i8"), ("seq", "<i8"), ("item", "<i4")])
_RECENT_HEAD = struct.Struct("<BqqII")  # format, next seq, history seq, L, G
_TOK_HEAD = struct.Struct("<B16sqHHH")  # format, model version, history seq, n buckets, G, D


def user_tag(user_id: str) -> str:
    if _SAFE_ID.fullmatch(user_id):
        return f"u:{user_id}"
    return "h:" + hashlib.blake2b(user_id.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class UserKeys:
    recent: str
    buckets: str
    tokens: str
    dedup: str


def user_keys(prefix: str, user_id: str) -> UserKeys:
    base = f"{prefix}:v{SCHEMA}:{{{user_tag(user_id)}}}"
    return UserKeys(f"{base}:recent", f"{base}:buckets", f"{base}:tok", f"{base}:dedup")


def keys_from_recent(recent_key: str) -> UserKeys:
    base = recent_key.removesuffix(":recent")
    return UserKeys(recent_key, f"{base}:buckets", f"{base}:tok", f"{base}:dedup")


# ---- recent window ------------------------------------------------------------------------------
@dataclass
class Recent:
    next_seq: int  # events ever appended for this user: the state sequence number
    history_seq: int  # next_seq at the last change of the history (tokens are stamped with it)
    recent_len: int
    bucket_size: int
    events: list[Event]  # oldest first


def encode_recent(r: Recent) -> bytes:
    rec = np.array([(e.ts, e.seq, e.item, e.action) for e in r.events], EVENT)
    return _RECENT_HEAD.pack(SCHEMA, r.next_seq, r.history_seq, r.recent_len, r.bucket_size) + rec.tobytes()


def decode_recent(blob: bytes) -> Recent:
    fmt, next_seq, history_seq, length, g = _RECENT_HEAD.unpack_from(blob)
    if fmt != SCHEMA:
        raise ValueError(f"recent window format {fmt}, expected {SCHEMA}")
    rec = np.frombuffer(blob, EVENT, offset=_RECENT_HEAD.size)
    events = list(map(Event._make, rec.tolist()))  # tolist() already yields Python ints
    return Recent(next_seq, history_seq, length, g, events)


# ---- raw buckets --------------------------------------------------------------------------------
def encode_bucket(entries: list[tuple[tuple[int, int], int]]) -> bytes:
    """[((ts, seq), item)] oldest first -> bytes."""
    return np.array([(ts, seq, item) for (ts, seq), item in entries], BUCKET_ITEM).tobytes()


def decode_bucket(blob: bytes) -> list[tuple[tuple[int, int], int]]:
    return [((t, s), i) for t, s, i in np.frombuffer(blob, BUCKET_ITEM).tolist()]


# ---- history tokens -----------------------------------------------------------------------------
@dataclass
class Tokens:
    """History tokens of the top V buckets, most recently active first."""

    version: str  # model version (bundle content hash) the tokens were computed with
    history_seq: int  # Recent.history_seq of the state they were computed from
    categories: np.ndarray  # (n,) int32
    newest: np.ndarray  # (n, 2) int64: (ts, seq) of each bucket's newest item, for ordering
    items: np.ndarray  # (n, G) int32, newest first, 0-padded: kept so a new model can recompute
    tokens: np.ndarray  # (n, D) float32


def encode_tokens(t: Tokens) -> bytes:
    n, g = t.items.shape
    d = t.tokens.shape[1] if t.tokens.ndim == 2 else 0
    head = _TOK_HEAD.pack(SCHEMA, t.version.encode()[:16], t.history_seq, n, g, d)
    return b"".join(
        [
            head,
            t.categories.astype("<i4").tobytes(),
            t.newest.astype("<i8").tobytes(),
            t.items.astype("<i4").tobytes(),
            t.tokens.astype("<f4").tobytes(),
        ]
    )


def decode_tokens(blob: bytes) -> Tokens:
    fmt, version, history_seq, n, g, d = _TOK_HEAD.unpack_from(blob)
    if fmt != SCHEMA:
        raise ValueError(f"token format {fmt}, expected {SCHEMA}")
    off = _TOK_HEAD.size
    cats = np.frombuffer(blob, "<i4", n, off)
    off += 4 * n
    newest = np.frombuffer(blob, "<i8", 2 * n, off).reshape(n, 2)
    off += 16 * n
    items = np.frombuffer(blob, "<i4", n * g, off).reshape(n, g)
    off += 4 * n * g
    tokens = np.frombuffer(blob, "<f4", n * d, off).reshape(n, d)
    return Tokens(version.rstrip(b"\0").decode(), history_seq, cats, newest, items, tokens)
