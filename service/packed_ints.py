"""A column of non-negative integers below 2**32 in two bytes each, with an escape for the rare
larger one.

The store keeps item ids, time gaps and sequence distances this way (service.store_codec): nearly
all are below 65,535, so they take half of a uint32. Unlike varints, both directions are one
``struct`` call plus, only when a value was escaped, one pass in Python: an append decodes and
re-encodes a user's recent window and the buckets it touches, and that cost is paid per event.

Layout: u32 k (values escaped), n uint16 (ESCAPE for a value >= ESCAPE), then the k escaped values
as uint32 in column order. All little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

ESCAPE = 0xFFFF
_COUNT = struct.Struct("<I")


def pack(values: Sequence[int]) -> bytes:
    """The block of ``values`` (each in [0, 2**32); ValueError otherwise)."""
    n = len(values)
    big = [v for v in values if v >= ESCAPE]
    try:
        if not big:
            return _COUNT.pack(0) + struct.pack(f"<{n}H", *values)
        small = [v if v < ESCAPE else ESCAPE for v in values]
        return _COUNT.pack(len(big)) + struct.pack(f"<{n}H{len(big)}I", *small, *big)
    except struct.error as exc:
        raise ValueError(f"packed ints must be in [0, 2**32): {exc}") from None


def size(blob: bytes, offset: int, n: int) -> int:
    """Bytes of the block of ``n`` values at ``offset``; ValueError if ``blob`` is shorter."""
    k: int = _COUNT.unpack_from(blob, offset)[0]
    total = _COUNT.size + 2 * n + 4 * k
    if k > n or offset + total > len(blob):
        raise ValueError(f"a block of {n} values with {k} escaped at byte {offset} of {len(blob)}")
    return total


def unpack(blob: bytes, offset: int, n: int) -> Sequence[int]:
    """The ``n`` values of the block at ``offset`` (its length checked by ``size`` beforehand)."""
    (k,) = _COUNT.unpack_from(blob, offset)
    values = struct.unpack_from(f"<{n}H", blob, offset + _COUNT.size)
    if not k:
        return values
    out = list(values)
    at = -1
    for big in struct.unpack_from(f"<{k}I", blob, offset + _COUNT.size + 2 * n):
        try:
            at = out.index(ESCAPE, at + 1)
        except ValueError:  # fewer escapes than the count says: only a corrupt value, read as is
            break
        out[at] = big
    return out
