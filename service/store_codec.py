"""Every Redis key and value format of the user-state store (schema version 1; docs/STORE.md).

Keys: all of one user's keys carry the hash tag ``{u:<id>}`` so they share one Redis Cluster slot
and can be updated in one MULTI/EXEC. Ids outside a safe character set (or too long) are replaced
by a hash, so a ``}`` in a user id can never move the tag.

    <prefix>:v1:{u:<id>}:recent    string  header + recent window (oldest first)
    <prefix>:v1:{u:<id>}:buckets   hash    category id -> that bucket's items (oldest first)
    <prefix>:v1:{u:<id>}:tok       string  history tokens (V buckets or C memory slots) of one model version
    <prefix>:v1:{u:<id>}:dedup     zset    event id -> expiry time (idempotency window)
    <prefix>:v1:{u:<id>}:hist      string  memory compressor: the whole raw history, key order
    <prefix>:v1:{u:<id>}:mem       string  memory compressor: folded memory + open segment, one model version

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
# format, model version, history seq, events folded, last key (ts, seq), C, D, open segment length
_MEM_HEAD = struct.Struct("<B16sqqqqHHH")


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
    history: str
    memory: str


def _keys(base: str) -> UserKeys:
    return UserKeys(*(f"{base}:{name}" for name in ("recent", "buckets", "tok", "dedup", "hist", "mem")))


def user_keys(prefix: str, user_id: str) -> UserKeys:
    return _keys(f"{prefix}:v{SCHEMA}:{{{user_tag(user_id)}}}")


def keys_from_recent(recent_key: str) -> UserKeys:
    return _keys(recent_key.removesuffix(":recent"))


# ---- recent window ------------------------------------------------------------------------------
@dataclass
class Recent:
    next_seq: int  # events ever appended for this user: the state sequence number
    history_seq: int  # next_seq at the last change of the history (tokens are stamped with it)
    recent_len: int
    bucket_size: int
    events: list[Event]  # oldest first


def encode_events(events: list[Event]) -> bytes:
    """Events as EVENT records; a concatenation of encodings decodes as the concatenated list."""
    return np.array([(e.ts, e.seq, e.item, e.action) for e in events], EVENT).tobytes()


def decode_events(blob: bytes, offset: int = 0, count: int = -1) -> list[Event]:
    rec = np.frombuffer(blob, EVENT, count, offset)
    return list(map(Event._make, rec.tolist()))  # tolist() already yields Python ints


def encode_recent(r: Recent) -> bytes:
    head = _RECENT_HEAD.pack(SCHEMA, r.next_seq, r.history_seq, r.recent_len, r.bucket_size)
    return head + encode_events(r.events)


def decode_recent(blob: bytes) -> Recent:
    fmt, next_seq, history_seq, length, g = _RECENT_HEAD.unpack_from(blob)
    if fmt != SCHEMA:
        raise ValueError(f"recent window format {fmt}, expected {SCHEMA}")
    return Recent(next_seq, history_seq, length, g, decode_events(blob, _RECENT_HEAD.size))


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


# ---- memory compressor --------------------------------------------------------------------------
@dataclass
class MemoryRecord:
    """The folded memory of one user for one model version: M_k after ``folded`` history events,
    plus the open segment (the history events after them, fewer than S)."""

    version: str
    history_seq: int  # Recent.history_seq of the state it was computed from
    folded: int  # history events folded into ``memory`` (a multiple of S)
    last_key: tuple[int, int]  # (ts, seq) of the newest history event
    memory: np.ndarray  # (C, D) float32
    open_events: list[Event]  # oldest first


def encode_memory(m: MemoryRecord) -> bytes:
    c, d = m.memory.shape
    head = _MEM_HEAD.pack(
        SCHEMA, m.version.encode()[:16], m.history_seq, m.folded, *m.last_key, c, d, len(m.open_events)
    )
    return head + m.memory.astype("<f4").tobytes() + encode_events(m.open_events)


def decode_memory(blob: bytes) -> MemoryRecord:
    fmt, version, history_seq, folded, ts, seq, c, d, n_open = _MEM_HEAD.unpack_from(blob)
    if fmt != SCHEMA:
        raise ValueError(f"memory format {fmt}, expected {SCHEMA}")
    off = _MEM_HEAD.size
    memory = np.frombuffer(blob, "<f4", c * d, off).reshape(c, d)
    events = decode_events(blob, off + 4 * c * d, n_open)
    return MemoryRecord(version.rstrip(b"\0").decode(), history_seq, folded, (ts, seq), memory, events)
