"""A real 3-master Redis Cluster on free local ports: redis-server --cluster-enabled + redis-cli."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis

from service.redis_server import EmbeddedRedis, RedisServerError, redis_binary


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so it is at most 55535)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port > 55535:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RedisServerError("no free port pair for a cluster node")


class LocalCluster:
    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(
                data_dir / f"node{n}",
                port=cluster_port(),
                appendfsync="always",
                extra_args=["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
            )
            for n in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout_s: float = 30) -> LocalCluster:
        for node in self.nodes:
            node.start()
        create = subprocess.run(
            [
                redis_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if create.returncode != 0:
            self.stop()
            raise RedisServerError(f"redis-cli --cluster create failed: {create.stdout[-1000:]}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [
                redis.Redis(port=n.port).cluster("info")["cluster_state"]  # type: ignore[no-untyped-call]
                for n in self.nodes
            ]
            if all(s == "ok" for s in states):
                return self
            time.sleep(0.1)
        self.stop()
        raise RedisServerError(f"cluster not ok within {timeout_s}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
