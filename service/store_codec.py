"""Every Redis key and value format of the user-state store (schema version 2; docs/STORE.md).

Keys: all of one user's keys carry the hash tag ``{u:<id>}`` so they share one Redis Cluster slot
and one Lua script can update them together. Ids outside a safe character set (or too long) are
replaced by a hash, so a ``}`` in a user id can never move the tag.

    <prefix>:v2:{u:<id>}:state          string  the truth: recent window + raw buckets
    <prefix>:v2:{u:<id>}:log            string  the truth too: accepted events not yet in the state
    <prefix>:v2:{u:<id>}:hist           string  memory compressor: raw history, key order
    <prefix>:v2:{u:<id>}:dedup          zset    event id -> expiry time (idempotency window)
    <prefix>:v2:{u:<id>}:tok:<version>  string  history tokens of one model version (derived)
    <prefix>:v2:{u:<id>}:mem:<version>  string  memory compressor: folded memory of one version
    <prefix>:v2:{u:<id>}:q:<version>    string  the user's query state for one version (derived)
    <prefix>:v2:{u:<id>}:ans:<version>  hash    rendered /recommend answers of one version (derived)
    <prefix>:v2:ids                     hash    stable ids of items, actions, categories (service.ids)
    <prefix>:v2:meta                    hash    the layout the store was written with

Stored ids are the store's stable ids (service.ids), never a bundle's internal ids, so a model
trained on a renumbered catalogue reads the same state. Every value starts with a format byte, so
a reader refuses a layout it does not know instead of misreading it; all integers little-endian.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate
from typing import overload

import numpy as np

from model.bucketing import Entry, Event
from service import packed_ints

SCHEMA = 2
FORMAT = 2  # the first byte of every value
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")

KIND_BUCKETS, KIND_MEMORY = 0, 1  # what the state's history is kept as
# Timestamps and sequence numbers are uint32: seconds until 2106, 4 billion events per user.
MAX_U32 = 2**32 - 1

EVENT = np.dtype([("ts", "<u4"), ("seq", "<u4"), ("item", "<u4"), ("action", "<u2")])  # 14 bytes
# The same record for struct, which builds Python tuples faster than numpy's tolist() + a copy.
_EVENT_ROW = struct.Struct("<IIIH")
assert _EVENT_ROW.size == EVENT.itemsize
_STATE_HEAD = struct.Struct(
    "<BBHHHHIII"
)  # format, kind, L, G, n recent, n buckets, next seq, history seq, history len
_BASE_TS = struct.Struct("<I")  # the recent window's oldest ts
_BUCKET_HEAD = struct.Struct("<IHIII")  # category, n items, newest (ts, seq, item)
_BUCKET_HEAD_V2 = struct.Struct("<IIH")  # format 2: category, newest seq, n items
_BUCKET_ROW = struct.Struct("<II")  # format 2: ts, item
_TOK_HEAD = struct.Struct("<B16sIHH")  # format, model version, history seq, n tokens, D
_TOK_ROW = np.dtype([("category", "<u4"), ("ts", "<u4"), ("seq", "<u4")])
_QUERY_HEAD = struct.Struct("<B16sIH")  # format, model version, next seq, D
_ANSWER_HEAD = struct.Struct("<B16sI")  # format, model version, next seq
# format, model version, history seq, events folded, newest history key (ts, seq), C, D, open length
_MEM_HEAD = struct.Struct("<B16sIIIIHHH")

STATE_HEAD_BYTES = _STATE_HEAD.size
"""A state's header holds its next seq: the append script compares these bytes to detect a
concurrent writer (compare-and-set)."""


class CorruptValue(ValueError):
    """A stored value that cannot be decoded (unknown format byte, wrong length)."""


def user_tag(user_id: str) -> str:
    if _SAFE_ID.fullmatch(user_id):
        return f"u:{user_id}"
    return "h:" + hashlib.blake2b(user_id.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class UserKeys:
    base: str

    @property
    def state(self) -> str:
        return f"{self.base}:state"

    @property
    def log(self) -> str:
        return f"{self.base}:log"

    @property
    def history(self) -> str:
        return f"{self.base}:hist"

    @property
    def dedup(self) -> str:
        return f"{self.base}:dedup"

    def tokens(self, version: str) -> str:
        return f"{self.base}:tok:{version}"

    def memory(self, version: str) -> str:
        return f"{self.base}:mem:{version}"

    def query(self, version: str) -> str:
        return f"{self.base}:q:{version}"

    def answers(self, version: str) -> str:
        return f"{self.base}:ans:{version}"


def user_keys(prefix: str, user_id: str) -> UserKeys:
    return UserKeys(f"{prefix}:v{SCHEMA}:{{{user_tag(user_id)}}}")


def keys_from_state(state_key: str) -> UserKeys:
    return UserKeys(state_key.removesuffix(":state"))


def ids_key(prefix: str) -> str:
    return f"{prefix}:v{SCHEMA}:ids"


def meta_key(prefix: str) -> str:
    return f"{prefix}:v{SCHEMA}:meta"


def _head(blob: bytes, head: struct.Struct, what: str) -> tuple:  # type: ignore[type-arg]
    if len(blob) < head.size or blob[0] != FORMAT:
        raise CorruptValue(f"{what}: format {blob[:1].hex() or 'empty'}, expected {FORMAT:02x}")
    return head.unpack_from(blob)


# ---- events ------------------------------------------------------------------------------------
def encode_events(events: Sequence[Event]) -> bytes:
    """Events as EVENT records; a concatenation of encodings decodes as the concatenated list."""
    return np.array(events, EVENT).tobytes() if len(events) else b""


_new_event = partial(tuple.__new__, Event)  # Event._make without its per-call checks: ~2x faster


def decode_events(blob: bytes, offset: int = 0, count: int = -1) -> list[Event]:
    if count < 0 and (len(blob) - offset) % EVENT.itemsize:
        raise CorruptValue(f"event records: {len(blob) - offset} bytes is not a multiple of {EVENT.itemsize}")
    n = (len(blob) - offset) // EVENT.itemsize if count < 0 else count
    end = offset + n * EVENT.itemsize
    if end > len(blob):
        raise ValueError(f"{n} event records from byte {offset} need {end} bytes, have {len(blob)}")
    return list(map(_new_event, _EVENT_ROW.iter_unpack(blob[offset:end])))


# ---- the event log: accepted events not yet folded into the state -------------------------------
LOG_EVENT = struct.Struct("<IIH")  # ts, item, action (store ids): 10 bytes
Logged = tuple[int, int, int]
"""An accepted event as the log keeps it: (ts, item, action) in store ids. Its seq is given when it
is folded: the state's next seq plus its place in the log, i.e. arrival order."""


def encode_log_records(events: Sequence[Logged]) -> bytes:
    """Records to append to a log (the key's first byte, FORMAT, is written with its first record)."""
    return b"".join(LOG_EVENT.pack(*e) for e in events)


def decode_log(blob: bytes) -> list[Logged]:
    """Every record of a log value, oldest first."""
    if not blob or blob[0] != FORMAT or (len(blob) - 1) % LOG_EVENT.size:
        raise CorruptValue(f"event log: format {blob[:1].hex() or 'empty'}, {len(blob)} bytes")
    return list(LOG_EVENT.iter_unpack(memoryview(blob)[1:]))


# ---- the state: recent window + raw buckets -----------------------------------------------------
STATE_FORMAT = 3
"""The state's first byte. Format 3 keeps ids, time gaps and seq distances as two-byte
service.packed_ints; format 2, fixed-width records, is still read, and a user's state is rewritten
as format 3 at its next event."""
READABLE_STATE_FORMATS = bytes([STATE_FORMAT, FORMAT])


def state_layout(kind: int, recent_len: int, bucket_size: int) -> bytes:
    """Bytes 1-5 of a state's header (kind, L, G): the log's append script refuses events for a
    user whose stored state has another layout, without reading the rest of it."""
    return struct.pack("<BHH", kind, recent_len, bucket_size)


class PackedBucket(Sequence[Entry]):
    """A stored bucket, left as its bytes until an entry other than the newest is read, and written
    back as those bytes when no event touched it: an append touches one or two of a user's buckets,
    and decoding and re-encoding all of them cost more than everything else it does.

    Entries read as ((ts, seq), item), oldest first. Only the newest entry's seq is stored; the
    older ones get negative stand-ins (-n+1 .. -1) that keep the stored order and sort below every
    real seq at an equal timestamp, which is where any event that can still join this bucket
    belongs (docs/STORE.md, "Values")."""

    __slots__ = ("_entries", "n", "newest", "raw")

    def __init__(self, raw: bytes, n: int, newest: tuple[int, int, int]) -> None:
        # As stored: the bucket's head (category, n, newest entry), then a packed_ints block of the
        # n - 1 older entries' gaps to the next entry and their items. Written back as is.
        self.raw = raw
        self.n = n
        self.newest = newest  # (ts, seq, item) of the newest entry
        self._entries: list[Entry] | None = None

    def _older(self) -> tuple[Sequence[int], Sequence[int]]:
        """(gaps, items) of the n - 1 older entries, oldest first."""
        older = self.n - 1
        values = packed_ints.unpack(self.raw, _BUCKET_HEAD.size, 2 * older)
        return values[:older], values[older:]

    def _decoded(self) -> list[Entry]:
        if self._entries is None:
            gaps, items = self._older()
            newest_ts, newest_seq, newest_item = self.newest
            ts = [newest_ts - back for back in accumulate(reversed(gaps))][::-1]  # ts_i = ts_i+1 - gap_i
            keys = zip(ts, range(1 - self.n, 0), strict=True)
            self._entries = [*zip(keys, items, strict=True), ((newest_ts, newest_seq), newest_item)]
        return self._entries

    def pushed(self, entry: Entry, limit: int) -> PackedBucket:
        """This bucket with ``entry`` (newer than its newest) as the newest, keeping the ``limit``
        newest entries: the bytes ``encode_state`` writes for that list, without decoding entries."""
        (ts, seq), item = entry
        newest_ts, newest_seq, newest_item = self.newest
        if (ts, seq) <= (newest_ts, newest_seq):
            raise ValueError(f"entry {entry} is not newer than the bucket's newest {self.newest}")
        older_gaps, older_items = self._older()
        gaps, items = [*older_gaps, ts - newest_ts], [*older_items, newest_item]
        drop = len(items) - (limit - 1)  # the oldest entries past the limit
        if drop > 0:
            del gaps[:drop], items[:drop]
        cat = _BUCKET_HEAD.unpack_from(self.raw)[0]
        return PackedBucket(
            _bucket_bytes(cat, len(items) + 1, entry, gaps + items), len(items) + 1, (ts, seq, item)
        )

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...
    def __getitem__(self, i: int | slice) -> Entry | list[Entry]:
        if isinstance(i, int) and i in (-1, self.n - 1):  # ranking reads only the newest entry
            ts, seq, item = self.newest
            return ((ts, seq), item)
        return self._decoded()[i]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._decoded())

    def __reversed__(self) -> Iterator[Entry]:
        return reversed(self._decoded())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def item_ids(self) -> np.ndarray:
        """(n,) int64 items, oldest first, without building the entries."""
        return np.array([*self._older()[1], self.newest[2]], np.int64)

    def __repr__(self) -> str:
        return f"PackedBucket({self._decoded()!r})"


@dataclass
class State:
    """One user's truth, in store ids. ``buckets`` maps a category to its entries oldest first,
    ((ts, seq), item); decoded buckets are PackedBucket (read-only, decoded on demand)."""

    kind: int
    recent_len: int
    bucket_size: int
    next_seq: int = 0  # events ever appended: the state's sequence number
    history_seq: int = 0  # next_seq at the last change of the history (derived state is stamped with it)
    history_len: int = 0  # memory compressor: events in `hist`
    recent: list[Event] = field(default_factory=list)  # oldest first
    buckets: MutableMapping[int, Sequence[Entry]] = field(default_factory=dict)


def _gaps(ts: Sequence[int]) -> list[int]:
    """Differences of consecutive timestamps in key order (never negative)."""
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    if min(gaps, default=0) < 0:
        raise ValueError("timestamps out of key order")
    return gaps


def _bucket_bytes(cat: int, n: int, newest: Entry, older: list[int]) -> bytes:
    """A bucket as stored: its head, then the older entries' gaps and items (``older``)."""
    (ts, seq), item = newest
    return _BUCKET_HEAD.pack(cat, n, ts, seq, item) + packed_ints.pack(older)


def _pack_bucket(cat: int, entries: Sequence[Entry]) -> bytes:
    if type(entries) is PackedBucket:  # untouched since it was read: its bytes as they are
        return entries.raw
    older = _gaps([t for (t, _), _ in entries]) + [i for _, i in entries[:-1]]
    return _bucket_bytes(cat, len(entries), entries[-1], older)


def _pack_recent(events: Sequence[Event], next_seq: int) -> bytes:
    """The oldest ts (u32), then one block of columns: ts gaps (one fewer than events), how far
    each seq is behind ``next_seq``, items, actions."""
    if not events:
        return _BASE_TS.pack(0) + packed_ints.pack(())
    ts, seq, item, action = zip(*events, strict=True)
    behind = [next_seq - s for s in seq]
    if min(behind) < 1:
        raise ValueError(f"an event's seq is not below the state's next seq {next_seq}")
    return _BASE_TS.pack(ts[0]) + packed_ints.pack([*_gaps(ts), *behind, *item, *action])


def _recent_size(blob: bytes, offset: int, n: int) -> int:
    return _BASE_TS.size + packed_ints.size(blob, offset + _BASE_TS.size, 4 * n - 1 if n else 0)


def _unpack_recent(blob: bytes, offset: int, n: int, next_seq: int) -> list[Event]:
    if not n:
        return []
    (base,) = _BASE_TS.unpack_from(blob, offset)
    values = packed_ints.unpack(blob, offset + _BASE_TS.size, 4 * n - 1)
    ts = accumulate(values[: n - 1], initial=base)
    seq = [next_seq - b for b in values[n - 1 : 2 * n - 1]]
    return list(
        map(_new_event, zip(ts, seq, values[2 * n - 1 : 3 * n - 1], values[3 * n - 1 :], strict=True))
    )


def encode_state(s: State) -> bytes:
    parts = [
        _STATE_HEAD.pack(
            STATE_FORMAT,
            s.kind,
            s.recent_len,
            s.bucket_size,
            len(s.recent),
            len(s.buckets),
            s.next_seq,
            s.history_seq,
            s.history_len,
        ),
        _pack_recent(s.recent, s.next_seq),
    ]
    parts += [_pack_bucket(cat, entries) for cat, entries in s.buckets.items()]
    return b"".join(parts)


def bucket_items(bucket: Sequence[Entry]) -> np.ndarray:
    """(n,) items of a bucket, oldest first, as stored or as the rule left them."""
    if isinstance(bucket, PackedBucket):
        return bucket.item_ids()
    return np.array([item for _, item in bucket], np.int64)


def decode_state(blob: bytes) -> State:
    """The state; buckets stay bytes (PackedBucket) until read. Every length is checked here, so a
    truncated or padded value is refused now rather than misread later."""
    if blob[:1] == bytes([FORMAT]):
        return _decode_state_v2(blob)
    if len(blob) < _STATE_HEAD.size or blob[0] != STATE_FORMAT:
        raise CorruptValue(f"state: format {blob[:1].hex() or 'empty'}, expected {STATE_FORMAT:02x}")
    _, kind, length, g, n_recent, n_buckets, next_seq, history_seq, history_len = _STATE_HEAD.unpack_from(
        blob
    )
    try:
        off = _STATE_HEAD.size
        size = _recent_size(blob, off, n_recent)
        recent = _unpack_recent(blob, off, n_recent, next_seq)
        off += size
        buckets: dict[int, Sequence[Entry]] = {}
        for _ in range(n_buckets):
            cat, n, ts, seq, item = _BUCKET_HEAD.unpack_from(blob, off)
            block = off + _BUCKET_HEAD.size
            if not n:
                raise ValueError(f"an empty bucket at byte {block}")
            end = block + packed_ints.size(blob, block, 2 * (n - 1))
            buckets[cat] = PackedBucket(blob[off:end], n, (ts, seq, item))
            off = end
    except (struct.error, ValueError) as exc:
        raise CorruptValue(f"state: truncated ({exc})") from None
    if off != len(blob):
        raise CorruptValue(f"state: {len(blob) - off} trailing bytes")
    return State(kind, length, g, next_seq, history_seq, history_len, recent, buckets)


def _decode_state_v2(blob: bytes) -> State:
    """Format 2: fixed-width records (14-byte events, 8-byte bucket entries), decoded whole."""
    _, kind, length, g, n_recent, n_buckets, next_seq, history_seq, history_len = _head(
        blob, _STATE_HEAD, "state"
    )
    try:
        off = _STATE_HEAD.size
        recent = decode_events(blob, off, n_recent)
        off += n_recent * EVENT.itemsize
        buckets: dict[int, Sequence[Entry]] = {}
        for _ in range(n_buckets):
            cat, newest_seq, n = _BUCKET_HEAD_V2.unpack_from(blob, off)
            off += _BUCKET_HEAD_V2.size
            end = off + n * _BUCKET_ROW.size
            if not n or end > len(blob):
                raise ValueError(f"bucket of {n} entries at byte {off} of {len(blob)}")
            flat = struct.unpack(f"<{2 * n}I", blob[off:end])
            seqs = [*range(1 - n, 0), newest_seq]
            buckets[cat] = list(zip(zip(flat[0::2], seqs, strict=True), flat[1::2], strict=True))
            off = end
    except (struct.error, ValueError) as exc:
        raise CorruptValue(f"state: truncated ({exc})") from None
    if off != len(blob):
        raise CorruptValue(f"state: {len(blob) - off} trailing bytes")
    return State(kind, length, g, next_seq, history_seq, history_len, recent, buckets)


def state_next_seq(blob: bytes) -> int:
    """The next seq in a state's header, without decoding the rest (CorruptValue if too short)."""
    if len(blob) < _STATE_HEAD.size:
        raise CorruptValue(f"state: {len(blob)} bytes, shorter than its header")
    return int(_STATE_HEAD.unpack_from(blob)[6])


def state_head(blob: bytes | None) -> bytes:
    """The bytes the append script compares (b"" for a user with no state yet)."""
    return blob[:STATE_HEAD_BYTES] if blob else b""


# ---- history tokens (derived, one key per model version) ----------------------------------------
@dataclass
class Tokens:
    """History tokens, most recently active bucket first, for one model version and history state."""

    version: str  # model version (bundle content hash)
    history_seq: int  # State.history_seq they were computed from
    categories: np.ndarray  # (n,) store category ids (0 for memory slots)
    newest: np.ndarray  # (n, 2) (ts, seq) of each bucket's newest item: its token's timestamp, its rank
    tokens: np.ndarray  # (n, D) float32
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))  # memory: seen items


def encode_tokens(t: Tokens) -> bytes:
    n, d = t.tokens.shape
    rows = np.zeros(n, _TOK_ROW)
    rows["category"], rows["ts"], rows["seq"] = t.categories, t.newest[:, 0], t.newest[:, 1]
    return b"".join(
        [
            _TOK_HEAD.pack(FORMAT, t.version.encode()[:16], t.history_seq, n, d),
            rows.tobytes(),
            t.tokens.astype("<f4").tobytes(),
            struct.pack("<I", len(t.exclude)),
            np.asarray(t.exclude, "<u4").tobytes(),
        ]
    )


def decode_tokens(blob: bytes) -> Tokens:
    _, version, history_seq, n, d = _head(blob, _TOK_HEAD, "tokens")
    off = _TOK_HEAD.size
    try:
        rows = np.frombuffer(blob, _TOK_ROW, n, off)
        off += n * _TOK_ROW.itemsize
        tokens = np.frombuffer(blob, "<f4", n * d, off).reshape(n, d)
        off += 4 * n * d
        (m,) = struct.unpack_from("<I", blob, off)
        exclude = np.frombuffer(blob, "<u4", m, off + 4)
    except (struct.error, ValueError) as exc:
        raise CorruptValue(f"tokens: truncated ({exc})") from None
    newest = np.stack([rows["ts"], rows["seq"]], axis=1).astype(np.int64)
    return Tokens(
        version.rstrip(b"\0").decode(),
        history_seq,
        rows["category"].astype(np.int64),
        newest,
        tokens,
        exclude,
    )


# ---- the query state (derived, one key per model version) ---------------------------------------
@dataclass
class Query:
    """The ranking graph's unit-norm query vector for a user: valid while the state's next seq is
    the one it was computed at."""

    version: str
    next_seq: int
    vector: np.ndarray  # (D,) float32


def encode_query(q: Query) -> bytes:
    head = _QUERY_HEAD.pack(FORMAT, q.version.encode()[:16], q.next_seq, len(q.vector))
    return head + q.vector.astype("<f4").tobytes()


def decode_query(blob: bytes) -> Query:
    _, version, next_seq, d = _head(blob, _QUERY_HEAD, "query state")
    if len(blob) != _QUERY_HEAD.size + 4 * d:
        raise CorruptValue(f"query state: {len(blob)} bytes for D={d}")
    return Query(version.rstrip(b"\0").decode(), next_seq, np.frombuffer(blob, "<f4", d, _QUERY_HEAD.size))


# ---- rendered answers (derived, one hash per model version, a field per request shape) ----------
def encode_answer(version: str, next_seq: int, body: bytes) -> bytes:
    """A /recommend answer as sent, stamped with the state's next seq it was computed at."""
    return _ANSWER_HEAD.pack(FORMAT, version.encode()[:16], next_seq) + body


def decode_answer(blob: bytes) -> tuple[str, int, bytes]:
    """(model version, next seq, body) of a rendered answer."""
    _, version, next_seq = _head(blob, _ANSWER_HEAD, "rendered answer")
    return version.rstrip(b"\0").decode(), next_seq, blob[_ANSWER_HEAD.size :]


# ---- memory compressor (derived, one key per model version) --------------------------------------
@dataclass
class MemoryRecord:
    """The folded memory of one user for one model version: M_k after ``folded`` history events,
    plus the open segment (the history events after them, fewer than S)."""

    version: str
    history_seq: int
    folded: int  # history events folded into ``memory`` (a multiple of S)
    last_key: tuple[int, int]  # (ts, seq) of the newest history event
    memory: np.ndarray  # (C, D) float32
    open_events: list[Event]  # oldest first, store ids


def encode_memory(m: MemoryRecord) -> bytes:
    c, d = m.memory.shape
    head = _MEM_HEAD.pack(
        FORMAT, m.version.encode()[:16], m.history_seq, m.folded, *m.last_key, c, d, len(m.open_events)
    )
    return head + m.memory.astype("<f4").tobytes() + encode_events(m.open_events)


def decode_memory(blob: bytes) -> MemoryRecord:
    _, version, history_seq, folded, ts, seq, c, d, n_open = _head(blob, _MEM_HEAD, "memory")
    off = _MEM_HEAD.size
    try:
        memory = np.frombuffer(blob, "<f4", c * d, off).reshape(c, d)
        events = decode_events(blob, off + 4 * c * d, n_open)
    except ValueError as exc:
        raise CorruptValue(f"memory: truncated ({exc})") from None
    return MemoryRecord(version.rstrip(b"\0").decode(), history_seq, folded, (ts, seq), memory, events)
