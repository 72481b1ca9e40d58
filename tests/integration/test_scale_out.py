"""Scale-out: stateless replicas sharing one Redis, and the whole service on a Redis Cluster."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis

from causerec.backfill import backfill
from loadtests.service_process import ServiceProcess

pytestmark = pytest.mark.integration


def _events(user: str, items: list[str], t0: int) -> dict[str, object]:
    return {
        "events": [
            {
                "user_id": user,
                "item_id": i,
                "action": "view",
                "timestamp": t0 + n,
                "event_id": f"{user}-{t0 + n}",
            }
            for n, i in enumerate(items)
        ]
    }


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
            assert httpx.post(writer.url + "/events", json=_events("r1", batch, 100 * lo)).status_code == 200
            seen = httpx.post(reader.url + "/recommend", json={"user_id": "r1", "k": 50}).json()
            assert seen["recent_events"] == min(5 * (lo + 1), 8)  # the other replica's write is visible
        answers = [httpx.post(s.url + "/recommend", json={"user_id": "r1", "k": 50}).json() for s in (a, b)]
        assert answers[0]["history_tokens"] >= 1
        assert answers[0] == answers[1]  # same state, same model: the same ranking
        # A retry that lands on the other replica is still recognised as a duplicate.
        again = httpx.post(b.url + "/events", json=_events("r1", items[:5], 0)).json()
        assert again == {"accepted": 0, "duplicates": 5, "invalid": []}


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
        r = httpx.post(svc.url + "/events", json=_events("cluster-new", ["i1", "i2", "i3"], 10))
        assert r.json() == {"accepted": 3, "duplicates": 0, "invalid": []}
        assert (
            httpx.post(svc.url + "/recommend", json={"user_id": "cluster-new"}).json()["recent_events"] == 3
        )
