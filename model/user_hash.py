"""The one definition of how a user id becomes a user-token row: shared by training and serving.

Hashing (rather than a dense id map) lets the service answer for users it has never seen; it is
stable across processes and machines (unlike Python's ``hash``) and takes ints and strings alike,
so ``42`` and ``"42"`` are the same user.
"""

from __future__ import annotations

import hashlib


def user_hash_bucket(user_id: str | int, num_buckets: int) -> int:
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_buckets
