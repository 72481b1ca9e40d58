"""Two bytes per value, an escape for the rare larger one: every uint32 round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import packed_ints


def test_bytes() -> None:
    """u32 count of escaped values, uint16 per value, then the escaped values as uint32."""
    assert packed_ints.pack([1, 65534, 65535, 2**32 - 1]).hex() == "020000000100feffffffffffffff0000ffffffff"
    assert packed_ints.pack([]).hex() == "00000000"


@given(st.lists(st.integers(0, 2**32 - 1), max_size=100), st.binary(max_size=8))
def test_values_round_trip_at_any_offset(values: list[int], before: bytes) -> None:
    blob = before + packed_ints.pack(values) + b"tail"
    assert packed_ints.size(blob, len(before), len(values)) == len(blob) - len(before) - 4
    assert list(packed_ints.unpack(blob, len(before), len(values))) == values


@pytest.mark.parametrize("values", [[-1], [2**32]])
def test_values_out_of_range_are_refused(values: list[int]) -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        packed_ints.pack(values)


def test_a_block_longer_than_the_value_is_refused() -> None:
    blob = packed_ints.pack([1, 2**20])
    with pytest.raises(ValueError, match="escaped"):
        packed_ints.size(blob[:-1], 0, 2)
