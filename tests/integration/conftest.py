"""A real redis-server per test session, on a free port; each test gets its own key prefix."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from service.redis_server import EmbeddedRedis
from tests.integration.stores import Backend


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real 3-master Redis Cluster (redis-server --cluster-enabled, redis-cli --cluster create)."""
    from service.redis_server import RedisServerError, redis_binary
    from tests.integration.redis_cluster import LocalCluster

    try:
        redis_binary("redis-cli")
    except RedisServerError as exc:
        pytest.skip(f"Redis Cluster tests need redis-cli: {exc}")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def backend(request, redis_server) -> Backend:  # type: ignore[no-untyped-def]
    """The store tests run on both: one redis-server and a 3-master Redis Cluster."""
    if request.param == "cluster":
        return Backend(request.getfixturevalue("redis_cluster").url, cluster=True)
    return Backend(redis_server.url, cluster=False)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def aio_redis(redis_server):  # type: ignore[no-untyped-def]
    return aioredis.Redis.from_url(redis_server.url, socket_timeout=5)


READ_KEY, WRITE_KEY, ADMIN_KEY = "read-key-123", "write-key-456", "admin-key-789"


@pytest.fixture(scope="session")
def second_bundle(tmp_path_factory, tiny_dataset):  # type: ignore[no-untyped-def]
    """Another model (other seed) on the same catalogue and L/G: a hot-reload target."""
    from export.bundle import export_bundle
    from model.train import TrainConfig, train
    from tests.conftest import TINY_MODEL

    tmp = tmp_path_factory.mktemp("second")
    train(
        tiny_dataset,
        TINY_MODEL,
        TrainConfig(epochs=1, seed=5, samples_per_user=1),
        tmp / "run",
        progress=False,
    )
    export_bundle(tmp / "run", tmp / "bundle")
    return tmp / "bundle"


@pytest.fixture(scope="session")
def api(tiny_bundle, redis_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The service with API keys, a small body limit and the no-op route, on a real Redis."""
    from loadtests.service_process import ServiceProcess

    proc = ServiceProcess(
        tiny_bundle,
        redis_server.url,
        tmp_path_factory.mktemp("api") / "service.log",
        read_keys=f'["{READ_KEY}"]',
        write_keys=f'["{WRITE_KEY}"]',
        admin_keys=f'["{ADMIN_KEY}"]',
        max_body_bytes="65536",
        key_prefix="api",
        noop_route="true",
    )
    proc.start()
    yield proc
    proc.stop()
