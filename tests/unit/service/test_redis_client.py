"""The C command packer must put exactly redis-py's bytes on the wire, and refuse what redis-py
refuses with the same error type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from service.redis_client import HiredisPackingConnection, connect

pytest.importorskip("hiredis", minversion="2.2.1")

ARG = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=80),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=40).map(bytearray),
    st.binary(max_size=40).map(memoryview),
)
COMMAND = st.sampled_from(["EVALSHA", "GET", "CONFIG GET", b"SET", b"CLIENT SETNAME"])


@given(COMMAND, st.lists(ARG, max_size=25))
def test_packs_the_same_bytes_as_redis_py(command: str | bytes, args: list[object]) -> None:
    ours = b"".join(HiredisPackingConnection().pack_command(command, *args))
    theirs = b"".join(bytes(chunk) for chunk in Connection().pack_command(command, *args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [None, True, object()])
def test_refuses_what_redis_py_refuses_with_its_error(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisPackingConnection().pack_command("SET", "k", bad)


def test_single_node_clients_pack_in_c_and_tls_keeps_its_own_class() -> None:
    assert connect("redis://localhost:1").connection_pool.connection_class is HiredisPackingConnection
    assert connect("rediss://localhost:1").connection_pool.connection_class is not HiredisPackingConnection
