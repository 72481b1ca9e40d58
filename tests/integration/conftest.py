"""A real redis-server per test session, on a free port; each test gets its own key prefix."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from service.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def aio_redis(redis_server):  # type: ignore[no-untyped-def]
    return aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
