"""Redis or the model unavailable: 503 within the configured timeout, never a hang or a 500."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from loadtests.service_process import ServiceProcess
from service.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_redis_down_gives_503_fast_and_recovers_without_restart(tiny_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    redis = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    with ServiceProcess(tiny_bundle, redis.url, tmp_path / "svc.log", redis_timeout_s="0.5") as svc:
        ok = httpx.post(
            svc.url + "/events",
            json={"events": [{"user_id": "f", "item_id": "i1", "action": "view", "event_id": "acked-1"}]},
        )
        assert ok.status_code == 200
        redis.kill()
        for path, body in [
            ("/recommend", {"user_id": "f"}),
            ("/events", {"events": [{"user_id": "f", "item_id": "i2", "action": "view"}]}),
        ]:
            started = time.monotonic()
            r = httpx.post(svc.url + path, json=body, timeout=10)
            elapsed = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert "redis" in r.json()["detail"]
            assert elapsed < 2.0  # 0.5 s timeout plus slack, never a hang
        assert httpx.get(svc.url + "/healthz").status_code == 200
        assert httpx.get(svc.url + "/readyz").status_code == 503
        restarted = EmbeddedRedis(tmp_path / "redis", port=redis.port, appendfsync="always").start()
        try:
            deadline = time.monotonic() + 10
            while httpx.get(svc.url + "/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            r = httpx.post(svc.url + "/recommend", json={"user_id": "f"})
            assert r.status_code == 200
            assert r.json()["recent_events"] == 1  # the acknowledged event survived kill -9 (AOF)
            dup = httpx.post(
                svc.url + "/events",
                json={"events": [{"user_id": "f", "item_id": "i1", "action": "view", "event_id": "acked-1"}]},
            )
            assert dup.status_code == 200, dup.text
            assert dup.json()["duplicates"] == 1
        finally:
            restarted.stop()


def test_model_not_loaded_gives_503(tiny_bundle, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = shutil.copytree(tiny_bundle, tmp_path / "bad")
    (bad / "history.onnx").write_bytes(b"corrupt")
    with ServiceProcess(bad, redis_server.url, tmp_path / "svc.log", wait_ready=False) as svc:
        r = httpx.post(svc.url + "/recommend", json={"user_id": "u"})
        assert r.status_code == 503
        assert "checksum does not match" in r.json()["detail"]
        ready = httpx.get(svc.url + "/readyz")
        assert ready.status_code == 503
        assert "model not loaded" in ready.json()["detail"]
        assert (
            httpx.post(
                svc.url + "/events", json={"events": [{"user_id": "u", "item_id": "i1", "action": "view"}]}
            ).status_code
            == 503
        )
