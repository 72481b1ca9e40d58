"""Redis or the model unavailable: 503 within the configured timeout, never a hang or a 500. The
Redis faults run on every server of the matrix (tests/integration/conftest.py, ``flavor``)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import redis as redis_sync

from loadtests.service_process import ServiceProcess
from service.redis_server import EmbeddedRedis
from tests.conftest import SLACK, TINY_MODEL

pytestmark = pytest.mark.integration


def test_redis_down_gives_503_fast_and_recovers_without_restart(tiny_bundle, tmp_path, flavor) -> None:  # type: ignore[no-untyped-def]
    binary = flavor[1]
    redis = EmbeddedRedis(tmp_path / "redis", appendfsync="always", binary=binary).start()
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
            assert elapsed < 2.0 * SLACK  # 0.5 s timeout plus slack, never a hang
        assert httpx.get(svc.url + "/healthz").status_code == 200
        assert httpx.get(svc.url + "/readyz").status_code == 503
        restarted = EmbeddedRedis(
            tmp_path / "redis", port=redis.port, appendfsync="always", binary=binary
        ).start()
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


@dataclass
class Traffic:
    """Closed-loop clients posting unique events and asking for recommendations, until stopped."""

    url: str
    clients: int = 8
    acked: list[dict[str, object]] = field(default_factory=list)
    answers: list[tuple[str, int, float]] = field(default_factory=list)  # (path, status, seconds)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, client: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            for n in range(100_000):  # bounded; the test stops it long before
                if self.stop.is_set():
                    return
                user = f"load-{client}-{n % 3}"
                event = {"user_id": user, "item_id": f"i{1 + n % 50}", "action": "view"}
                event["event_id"] = f"{client}-{n}"
                for path, body in [("/events", {"events": [event]}), ("/recommend", {"user_id": user})]:
                    started = time.monotonic()
                    r = http.post(path, json=body)
                    self.answers.append((path, r.status_code, time.monotonic() - started))
                    if path == "/events" and r.status_code == 200:
                        self.acked.append(event)

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self.run, args=(c,)) for c in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def wait_for(self, status: int, after: int, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(s == status for _, s, _ in self.answers[after:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {status} answer within {timeout_s}s")


def test_kill_redis_under_load_loses_no_acknowledged_event(tiny_bundle, tmp_path, flavor) -> None:  # type: ignore[no-untyped-def]
    binary = flavor[1]
    redis = EmbeddedRedis(tmp_path / "redis", appendfsync="always", binary=binary).start()
    with ServiceProcess(tiny_bundle, redis.url, tmp_path / "svc.log", redis_timeout_s="0.5") as svc:
        with Traffic(svc.url) as traffic:
            traffic.wait_for(200, 0)
            time.sleep(1.0)
            redis.kill()
            killed_at = len(traffic.answers)
            traffic.wait_for(503, killed_at)
            time.sleep(1.5)
            assert httpx.get(svc.url + "/healthz", timeout=2).status_code == 200  # workers alive
            redis = EmbeddedRedis(
                tmp_path / "redis", port=redis.port, appendfsync="always", binary=binary
            ).start()
            restarted_at = len(traffic.answers)
            traffic.wait_for(200, restarted_at)  # recovered without a service restart
            time.sleep(0.5)
        statuses = {s for _, s, _ in traffic.answers}
        assert statuses <= {200, 503}, statuses  # never a 500, never another code
        outage = traffic.answers[killed_at:restarted_at]
        assert outage
        assert max(t for _, _, t in outage) < 2.0 * SLACK  # 0.5 s timeout: answered, no hang
        assert sum(s == 503 for _, s, _ in outage) >= len(outage) // 2
        acked = traffic.acked
        assert len(acked) > 20
        print(
            f"kill -9 under load: {len(traffic.answers)} answers, {len(acked)} events acknowledged, "
            f"outage {len(outage)} answers ({sum(s == 503 for _, s, _ in outage)} x 503), "
            f"slowest outage answer {max(t for _, _, t in outage):.2f}s"
        )
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            for lo in range(0, len(acked), 500):  # every acknowledged id is stored: a re-post is a duplicate
                r = http.post("/events", json={"events": acked[lo : lo + 500]})
                assert r.status_code == 200, r.text
                assert (r.json()["accepted"], r.json()["duplicates"]) == (0, len(acked[lo : lo + 500]))
            by_user: dict[str, int] = {}
            for e in acked:
                by_user[str(e["user_id"])] = by_user.get(str(e["user_id"]), 0) + 1
            for user, n in list(by_user.items())[:10]:
                seen = http.post("/recommend", json={"user_id": user}).json()["recent_events"]
                assert seen >= min(n, TINY_MODEL["recent_len"])
    redis.stop()


def test_slow_redis_gives_503_and_the_event_loop_stays_responsive(tiny_bundle, tmp_path, flavor) -> None:  # type: ignore[no-untyped-def]
    """CLIENT PAUSE stalls every client of the server for 3 s (DEBUG SLEEP would need
    enable-debug-command on Redis >= 7): requests end in 503 within the timeout, /healthz answers."""
    redis = EmbeddedRedis(tmp_path / "redis", appendfsync="always", binary=flavor[1]).start()
    with ServiceProcess(tiny_bundle, redis.url, tmp_path / "svc.log", redis_timeout_s="0.5") as svc:
        event = {"events": [{"user_id": "slow", "item_id": "i1", "action": "view"}]}
        assert httpx.post(svc.url + "/events", json=event).status_code == 200
        redis_sync.Redis.from_url(redis.url).execute_command("CLIENT", "PAUSE", 3000)
        paused_at = time.monotonic()
        for path, body in [("/recommend", {"user_id": "slow"}), ("/events", event)]:
            started = time.monotonic()
            r = httpx.post(svc.url + path, json=body, timeout=10)
            assert r.status_code == 503, r.text
            assert "did not answer" in str(r.json()["detail"]) or "redis" in str(r.json()["detail"])
            assert time.monotonic() - started < 1.5 * SLACK
        started = time.monotonic()
        assert httpx.get(svc.url + "/healthz", timeout=2).status_code == 200
        assert time.monotonic() - started < 0.3 * SLACK  # the event loop is not blocked on Redis
        time.sleep(max(0.0, 3.2 - (time.monotonic() - paused_at)))
        r = httpx.post(svc.url + "/recommend", json={"user_id": "slow"}, timeout=5)
        assert r.status_code == 200, r.text  # pooled connections that timed out were replaced
    redis.stop()
