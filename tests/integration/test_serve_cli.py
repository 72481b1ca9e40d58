"""`causerec serve` as a user runs it: embedded Redis when no URL is given, SIGHUP reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.redis_server import aof_files, free_port

pytestmark = pytest.mark.integration


def _wait(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready")


def test_serve_starts_an_embedded_redis_and_reloads_on_sighup(tiny_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAUSEREC_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from causerec.cli import app; app()",
            "serve",
            "--bundle",
            str(tiny_bundle),
            "--port",
            str(port),
            "--redis-data",
            str(tmp_path / "redis"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/readyz")
        assert "embedded redis-server" in log.read_text()
        r = httpx.post(
            url + "/events", json={"events": [{"user_id": "cli", "item_id": "i1", "action": "view"}]}
        )
        assert r.json()["accepted"] == 1
        assert httpx.post(url + "/recommend", json={"user_id": "cli"}).json()["recent_events"] == 1
        assert (
            sum(f.stat().st_size for f in aof_files(tmp_path / "redis")) > 0
        )  # persisted, not in memory only
        loads = log.read_text().count("serving model")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while log.read_text().count("serving model") == loads and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log.read_text().count("serving model") == loads + 1
        assert httpx.get(url + "/readyz").status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert not _redis_left_running(tmp_path / "redis")


def _redis_left_running(data_dir: Path) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return str(data_dir) in out
