"""Scale-out: stateless replicas sharing one Redis, and the whole service on a Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
import redis

from causerec.backfill import backfill
from loadtests.service_process import ServiceProcess
from service.redis_server import EmbeddedRedis
from tests.integration.payloads import events_body
from tests.integration.redis_cluster import LocalCluster

pytestmark = pytest.mark.integration


def test_two_replicas_on_one_redis_serve_the_same_state(tiny_bundle, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kw = {"key_prefix": "replicas"}
    with (
        ServiceProcess(tiny_bundle, redis_server.url, tmp_path / "a.log", **kw) as a,
        ServiceProcess(tiny_bundle, redis_server.url, tmp_path / "b.log", **kw) as b,
    ):
        assert a.port != b.port
        items = [f"i{n}" for n in range(1, 21)]
        for lo, (writer, reader) in enumerate([(a, b), (b, a)] * 2):
            batch = items[lo * 5 : lo * 5 + 5]
            assert (
                httpx.post(writer.url + "/events", json=events_body("r1", batch, 100 * lo)).status_code == 200
            )
            seen = httpx.post(reader.url + "/recommend", json={"user_id": "r1", "k": 50}).json()
            assert seen["recent_events"] == min(5 * (lo + 1), 8)  # the other replica's write is visible
        answers = [httpx.post(s.url + "/recommend", json={"user_id": "r1", "k": 50}).json() for s in (a, b)]
        assert answers[0]["history_tokens"] >= 1
        assert answers[0] == answers[1]  # same state, same model: the same ranking
        # A retry that lands on the other replica is still recognised as a duplicate.
        again = httpx.post(b.url + "/events", json=events_body("r1", items[:5], 0)).json()
        assert (again["accepted"], again["duplicates"], again["invalid"]) == (0, 5, [])


def test_service_and_backfill_on_a_redis_cluster(tiny_bundle, tiny_dataset, redis_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = asyncio.run(
        backfill(tiny_bundle, tiny_dataset, redis_cluster.url, "cl", progress=False, cluster=True)
    )
    assert report["events"] > 0
    owners = {n.port: redis.Redis(port=n.port).dbsize() for n in redis_cluster.nodes}
    assert all(count > 0 for count in owners.values()), owners  # users really spread over 3 shards
    with ServiceProcess(
        tiny_bundle, redis_cluster.url, tmp_path / "svc.log", key_prefix="cl", redis_cluster="true"
    ) as svc:
        user = tiny_dataset.users.external(1)
        before = httpx.post(svc.url + "/recommend", json={"user_id": user}).json()
        assert before["recent_events"] == 8
        assert before["history_tokens"] >= 1  # backfilled history tokens are read from the cluster
        r = httpx.post(svc.url + "/events", json=events_body("cluster-new", ["i1", "i2", "i3"], 10))
        assert (r.json()["accepted"], r.json()["duplicates"], r.json()["invalid"]) == (3, 0, [])
        assert (
            httpx.post(svc.url + "/recommend", json={"user_id": "cluster-new"}).json()["recent_events"] == 3
        )


def test_a_lost_cluster_shard_gives_503_not_500_and_recovers(tiny_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = LocalCluster(tmp_path / "cluster").start()
    try:
        with ServiceProcess(
            tiny_bundle,
            cluster.url,
            tmp_path / "svc.log",
            key_prefix="shard",
            redis_cluster="true",
            redis_timeout_s="0.5",
        ) as svc:
            users = [f"s{u}" for u in range(30)]
            for u in users:
                assert (
                    httpx.post(svc.url + "/events", json=events_body(u, ["i1", "i2"], 0)).status_code == 200
                )
            lost = cluster.nodes[1]
            lost.kill()
            for wait_s in (0.0, 7.0):  # before and after the cluster notices (node timeout 5 s)
                time.sleep(wait_s)
                answers = Counter()
                for u in users:
                    started = time.monotonic()
                    r = httpx.post(svc.url + "/recommend", json={"user_id": u}, timeout=10)
                    assert time.monotonic() - started < 2.0
                    answers[r.status_code] += 1
                assert set(answers) <= {200, 503}, answers
                assert answers[503] > 0, answers
            restarted = EmbeddedRedis(
                lost.data_dir, port=lost.port, appendfsync="always", extra_args=lost.extra_args
            )
            cluster.nodes[1] = restarted.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the cluster heals without a service restart
                statuses = {
                    httpx.post(svc.url + "/recommend", json={"user_id": u}, timeout=10).status_code
                    for u in users
                }
                if statuses == {200}:
                    break
                time.sleep(0.5)
            assert statuses == {200}
            for u in users:  # every acknowledged event is back, on every shard
                again = httpx.post(svc.url + "/events", json=events_body(u, ["i1", "i2"], 0)).json()
                assert (again["accepted"], again["duplicates"], again["invalid"]) == (0, 2, [])
    finally:
        cluster.stop()
