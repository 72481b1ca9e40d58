"""The one way to build a Redis client for the store: a single node or a Redis Cluster."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster


def connect(url: str, cluster: bool = False, timeout_s: float = 30.0, max_connections: int = 64) -> Redis:
    """Every timeout is ``timeout_s``; a cluster client routes each user's keys (one hash slot) to
    the node that owns them, which is why the store then uses one transaction per user."""
    common = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "max_connections": max_connections,
    }
    if cluster:
        return RedisCluster.from_url(url, **common)  # type: ignore[arg-type,return-value]
    # A blocking pool waits (up to the timeout) for a free connection under bursts instead of failing.
    pool = BlockingConnectionPool.from_url(url, timeout=timeout_s, **common)
    return Redis(connection_pool=pool)
