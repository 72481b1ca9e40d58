"""User state across model changes, rollouts and failures, end to end (real uvicorn, Redis and
ONNX Runtime): store ids survive a renumbered catalogue, two versions serving at once do not
fight over tokens, one broken user fails alone, and the event loop keeps answering."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis

from loadtests.service_process import ServiceProcess
from model.bucketing import Event, bucketize, split_recent
from service.store_codec import user_keys
from tests.conftest import SLACK, TINY_MODEL
from tests.integration.payloads import events_body

pytestmark = pytest.mark.integration
L, V, G = TINY_MODEL["recent_len"], TINY_MODEL["num_buckets"], TINY_MODEL["bucket_size"]


def _all(url: str, user: str, n_items: int, exclude_seen: bool = True) -> dict:  # type: ignore[type-arg]
    r = httpx.post(
        url + "/recommend", json={"user_id": user, "k": n_items, "exclude_seen": exclude_seen}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_renumbered_bundle_reads_the_stored_users_as_they_were(
    tiny_bundle, renumbered_bundle, tiny_dataset, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Redis keeps store ids, not a bundle's internal ids: after a hot reload to a bundle whose
    catalogue is numbered differently, the user's items are the same items."""
    d = tiny_dataset
    everything = set(d.items.to_list())
    posted = [d.items.external(i) for i in (3, 17, 42, 99, 150)]  # fewer than L: all in the window
    with ServiceProcess(tiny_bundle, redis_server.url, tmp_path / "s.log", key_prefix="renum") as svc:
        assert httpx.post(svc.url + "/events", json=events_body("ren", posted)).status_code == 200
        before = _all(svc.url, "ren", len(everything))
        assert {x["item_id"] for x in before["items"]} == everything - set(posted)
        r = httpx.post(svc.url + "/admin/reload", json={"bundle": str(renumbered_bundle)}, timeout=60)
        assert r.status_code == 200, r.text
        after = _all(svc.url, "ren", len(everything))
        assert after["model_version"] != before["model_version"]
        assert {x["item_id"] for x in after["items"]} == everything - set(posted)  # exactly those excluded
        assert after["recent_events"] == before["recent_events"] == len(posted)
        # Events posted under the new numbering land on the same items too.
        more = [d.items.external(7)]
        assert httpx.post(svc.url + "/events", json=events_body("ren", more, 2000)).status_code == 200
        assert {x["item_id"] for x in _all(svc.url, "ren", len(everything))["items"]} == everything - set(
            posted + more
        )


def test_two_versions_serving_at_once_build_tokens_once_per_user(
    tiny_bundle, second_bundle, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A rolling update: replicas of two model versions on one Redis, reads interleaved on the same
    users. Each version keeps its own tokens, so after the first read per (user, version) no read
    rebuilds anything (the old design rebuilt on every alternation, and the two thrashed)."""
    users = [f"roll{u}" for u in range(12)]
    kw = {"key_prefix": "roll"}
    with (
        ServiceProcess(tiny_bundle, redis_server.url, tmp_path / "a.log", **kw) as a,
        ServiceProcess(second_bundle, redis_server.url, tmp_path / "b.log", **kw) as b,
    ):
        for n, u in enumerate(users):
            items = [f"i{1 + (n * 7 + j) % 290}" for j in range(30)]  # 30 events: history tokens
            assert httpx.post(a.url + "/events", json=events_body(u, items)).status_code == 200
        builds = "causerec_store_token_builds_total"
        for _ in range(3):
            for u in users:
                for svc in (a, b):
                    r = httpx.post(svc.url + "/recommend", json={"user_id": u}, timeout=10).json()
                    assert r["history_tokens"] == V
        assert _metric(a.url, builds) == 0  # A's tokens were written by the appends
        assert _metric(b.url, builds) == len(users)  # B built each user's once, then read them
        hits = _metric(b.url, 'causerec_answer_cache_total{outcome="hit"}')
        assert hits == 2 * len(users)  # rounds 2 and 3: B's stored answers, no model call


def test_exclude_seen_removes_the_recent_window_and_the_history_tokens_items(api, tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    """What exclude_seen removes, exactly: the L recent items and the G newest items of each of the
    V buckets the model reads (older history is not excluded)."""
    d = tiny_dataset
    internal = [1 + (n * 13) % d.num_items for n in range(60)]
    events = [Event(5000 + n, n, i, 1) for n, i in enumerate(internal)]
    body = events_body("excl", [d.items.external(i) for i in internal], 5000)
    assert (
        httpx.post(api.url + "/events", json=body, headers={"X-API-Key": "write-key-456"}).status_code == 200
    )
    history, recent = split_recent(events, L)
    top = bucketize(history, d.categories_of, V, G)
    expected = {e.item for e in recent} | {i for b in top for i in b.items}
    assert expected < set(internal)  # some history is older than what the model reads
    r = httpx.post(
        api.url + "/recommend", json={"user_id": "excl", "k": 1000}, headers={"X-API-Key": "read-key-123"}
    )
    returned = {d.items.internal(x["item_id"]) for x in r.json()["items"]}
    assert returned == set(range(1, d.num_items + 1)) - expected


def test_a_corrupt_user_fails_alone_in_a_batch_and_derived_values_are_repaired(
    tiny_bundle, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    db = redis.Redis.from_url(redis_server.url)
    with ServiceProcess(
        tiny_bundle, redis_server.url, tmp_path / "s.log", key_prefix="iso", max_wait_ms="50"
    ) as svc:
        users = [f"iso{u}" for u in range(32)]
        for u in users:
            assert (
                httpx.post(
                    svc.url + "/events", json=events_body(u, [f"i{j}" for j in range(1, 30)])
                ).status_code
                == 200
            )
        db.set(user_keys("iso", "iso7").state, b"\x02garbage")  # the truth, unreadable
        tok = next(iter(db.scan_iter(match="iso:v2:{u:iso8}:tok:*")))
        db.set(tok, b"\x02broken")  # derived: rebuilt from the state
        answers: dict[str, httpx.Response] = {}

        def ask(u: str) -> None:
            answers[u] = httpx.post(svc.url + "/recommend", json={"user_id": u}, timeout=20)

        threads = [threading.Thread(target=ask, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _metric(svc.url, "causerec_batch_size_count") < 32  # they really shared batches
        assert {u: r.status_code for u, r in answers.items()} == dict.fromkeys(users, 200)
        broken = answers["iso7"].json()
        assert broken["recent_events"] == 0
        assert "unreadable" in broken["warnings"][0] or "unusable" in broken["warnings"][0]
        for u in users:
            if u != "iso7":
                assert answers[u].json()["warnings"] == []
                assert answers[u].json()["history_tokens"] == V
        assert _metric(svc.url, 'causerec_store_repairs_total{kind="tokens"}') == 1
        assert _metric(svc.url, "causerec_store_corrupt_states_total") >= 1
        # Writes: the broken user's events are refused (409, its truth is not overwritten), the
        # other user's are applied, and the answer says which is which.
        mixed = {
            "events": events_body("iso7", ["i1"], 9000)["events"]
            + events_body("iso9", ["i2"], 9000)["events"]
        }
        r = httpx.post(svc.url + "/events", json=mixed)
        assert r.status_code == 409, r.text
        outcome = {u["user_id"]: u for u in r.json()["detail"]["users"]}
        assert outcome["iso9"]["accepted"] == 1
        assert outcome["iso7"]["accepted"] == 0
        assert "unusable" in outcome["iso7"]["error"]
        assert db.get(user_keys("iso", "iso7").state) == b"\x02garbage"


@pytest.mark.parametrize("bundle", ["tiny_bundle", "memory_bundle"])
def test_the_event_loop_answers_while_a_big_batch_is_applied(
    request, bundle, redis_server, tmp_path, tiny_dataset
) -> None:  # type: ignore[no-untyped-def]
    """1,000 events for 1,000 users in one request: the rule, the history graph and the folds run
    off the event loop, so /healthz keeps answering within 50 ms meanwhile."""
    path = request.getfixturevalue(bundle)
    with ServiceProcess(path, redis_server.url, tmp_path / "s.log", key_prefix=f"loop-{bundle}") as svc:
        catalogue = tiny_dataset.items.to_list()
        for u in range(0, 1000, 80):  # users with history, so every event moves a bucket or a fold
            batch = [
                e
                for n in range(u, min(u + 80, 1000))
                for e in events_body(f"b{n}", [catalogue[(n + j) % len(catalogue)] for j in range(12)])[
                    "events"
                ]
            ]
            assert httpx.post(svc.url + "/events", json={"events": batch}, timeout=60).status_code == 200
        # Best of three batches: a shared VM stalls a whole process now and then (single probes of
        # 70-600 ms were measured with the loop idle), while work on the loop slows every batch.
        worst = []
        for attempt in range(3):
            t0 = 9000 + attempt
            big = [
                events_body(f"b{n}", [catalogue[n % len(catalogue)]], t0)["events"][0] for n in range(1000)
            ]
            latencies = _probe_while(svc.url, {"events": big})
            worst.append(max(latencies))
            if worst[-1] < 0.05 * SLACK:
                break
        assert min(worst) < 0.05 * SLACK, worst


def _probe_while(url: str, body: dict[str, object]) -> list[float]:
    """/healthz latencies, probed back to back while ``body`` is posted to /events from a thread."""
    done = threading.Event()
    result: list[httpx.Response] = []

    def run() -> None:
        try:
            result.append(httpx.post(url + "/events", json=body, timeout=120))
        finally:
            done.set()

    latencies = []
    with httpx.Client(timeout=5) as http:
        http.get(url + "/healthz")  # connect before timing
        worker = threading.Thread(target=run)
        worker.start()
        while not done.is_set():
            started = time.monotonic()
            assert http.get(url + "/healthz").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.005)
    worker.join()
    assert result, "the post raised (see the thread's traceback above)"
    assert result[0].status_code == 200, result[0].text
    assert result[0].json()["accepted"] == 1000
    assert len(latencies) >= 5  # the request took long enough to be probed
    return latencies


def test_a_stored_answer_is_the_answer_the_model_gives_until_the_user_or_the_model_changes(
    tiny_bundle, second_bundle, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Two services on one store: A keeps answers (the default), B computes every answer
    (CAUSEREC_ANSWERS_TTL_S=0). A's repeated reads are served as stored and are byte for byte what B
    computes, for each request shape; after an event, or on another model, A computes again."""
    users = [f"ans{u}" for u in range(4)]
    shapes = [{"k": 10}, {"k": 3, "include": ["title", "categories"]}, {"k": 10, "exclude_seen": False}]
    kw = {"key_prefix": "ans"}

    def ask(url: str, user: str, shape: dict) -> bytes:  # type: ignore[type-arg]
        r = httpx.post(url + "/recommend", json={"user_id": user, **shape}, timeout=10)
        assert r.status_code == 200, r.text
        return r.content

    hit, miss = 'causerec_answer_cache_total{outcome="hit"}', 'causerec_answer_cache_total{outcome="miss"}'
    with (
        ServiceProcess(tiny_bundle, redis_server.url, tmp_path / "a.log", **kw) as a,
        ServiceProcess(tiny_bundle, redis_server.url, tmp_path / "b.log", answers_ttl_s="0", **kw) as b,
    ):
        for n, u in enumerate(users):
            items = [f"i{1 + (n * 11 + j) % 290}" for j in range(30)]
            assert httpx.post(a.url + "/events", json=events_body(u, items)).status_code == 200
        for u in users:
            for shape in shapes:
                first, again = ask(a.url, u, shape), ask(a.url, u, shape)
                assert first == again == ask(b.url, u, shape)
        assert (_metric(a.url, hit), _metric(a.url, miss)) == (len(users) * len(shapes),) * 2

        assert httpx.post(a.url + "/events", json=events_body(users[0], ["i7"], 5000)).status_code == 200
        for shape in shapes:
            assert ask(a.url, users[0], shape) == ask(b.url, users[0], shape)
        assert _metric(a.url, miss) == (len(users) + 1) * len(shapes)  # the moved user, computed again

        r = httpx.post(a.url + "/admin/reload", json={"bundle": str(second_bundle)}, timeout=60)
        assert r.status_code == 200, r.text
        answer = httpx.post(a.url + "/recommend", json={"user_id": users[1], "k": 10}, timeout=10).json()
        assert answer["model_version"] == r.json()["model_version"]
        assert _metric(a.url, miss) == (len(users) + 1) * len(shapes) + 1
