"""End to end: a real uvicorn process, a real Redis server, real ONNX Runtime."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY

pytestmark = pytest.mark.integration
W = {"X-API-Key": WRITE_KEY}
R = {"X-API-Key": READ_KEY}


def post(api, path: str, body: object, headers: dict[str, str] = W) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(api.url + path, json=body, headers=headers, timeout=10)


def recommend(api, user: str, k: int = 20) -> dict:  # type: ignore[no-untyped-def,type-arg]
    r = post(api, "/recommend", {"user_id": user, "k": k}, R)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_events_that_move_a_user_into_a_category_shift_recommendations(api, tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    d = tiny_dataset
    cat_of = {d.items.external(i): set(d.item_categories[i]) for i in range(1, d.num_items + 1)}
    user = "shifter"
    start = [
        {"user_id": user, "item_id": d.items.external(i), "action": "view", "timestamp": 1000 + n}
        for n, i in enumerate(j for j in range(1, d.num_items + 1) if 1 in d.item_categories[j])
    ][:20]
    assert post(api, "/events", {"events": start}).json()["accepted"] == 20
    target = 5
    members = [d.items.external(i) for i in range(1, d.num_items + 1) if d.item_categories[i] == (target,)]
    before = sum(target in cat_of[x["item_id"]] for x in recommend(api, user)["items"])
    # A few items, repeated: exclude_seen must leave most of the category available to recommend.
    moved = [
        {"user_id": user, "item_id": members[n % 4], "action": "like", "timestamp": 2000 + n}
        for n in range(30)
    ]
    assert post(api, "/events", {"events": moved}).json()["accepted"] == 30
    after_body = recommend(api, user)
    after = sum(target in cat_of[x["item_id"]] for x in after_body["items"])
    assert after > before, (before, after)
    assert after_body["history_tokens"] >= 1
    assert after_body["recent_events"] == 8


def test_recommend_answer_shape_and_unknown_user(api) -> None:  # type: ignore[no-untyped-def]
    body = recommend(api, "never-seen-before", k=7)
    assert body["user_id"] == "never-seen-before"
    assert len(body["items"]) == 7
    assert body["recent_events"] == 0
    assert body["history_tokens"] == 0
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert recommend(api, 12345, k=3)["user_id"] == "12345"  # int ids are accepted as strings


def test_exclude_seen_leaves_out_the_recent_window(api, tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    items = [tiny_dataset.items.external(i) for i in range(1, 6)]
    post(api, "/events", {"events": [{"user_id": "ex", "item_id": i, "action": "view"} for i in items]})
    got = {x["item_id"] for x in recommend(api, "ex", k=200)["items"]}
    assert not got & set(items)
    r = post(api, "/recommend", {"user_id": "ex", "k": 200, "exclude_seen": False}, R)
    assert set(items) <= {x["item_id"] for x in r.json()["items"]}


def test_duplicate_event_ids_are_counted_once(api) -> None:  # type: ignore[no-untyped-def]
    ev = {"user_id": "dup", "item_id": "i1", "action": "view", "event_id": "e-1"}
    first = post(api, "/events", {"events": [ev, ev]}).json()
    assert (first["accepted"], first["duplicates"], first["invalid"]) == (1, 1, [])
    assert first["users"] == [{"user_id": "dup", "accepted": 1, "duplicates": 1, "error": None}]
    again = post(api, "/events", {"events": [ev]}).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/recommend", {"k": 5}, 422, "Field required"),
        ("/recommend", {"user_id": "u", "k": 0}, 422, "greater than or equal to 1"),
        ("/recommend", {"user_id": "u", "k": 1001}, 422, "less than or equal to 1000"),
        ("/recommend", {"user_id": "u", "k": "many"}, 422, "valid integer"),
        ("/recommend", {"user_id": "x" * 10_000}, 422, "1 to 256 characters long, got 10000"),
        ("/recommend", {"user_id": "a\u0000b"}, 422, "control characters"),
        ("/recommend", {"user_id": True}, 422, "not a boolean"),
        ("/recommend", {"user_id": "u", "surprise": 1}, 422, "Extra inputs are not permitted"),
        ("/events", {"events": []}, 422, "at least 1 item"),
        ("/events", {"events": [{"user_id": "u", "item_id": "i1"}]}, 422, "Field required"),
    ],
)
def test_malformed_requests_get_422_with_a_message(api, path, body, status, message) -> None:  # type: ignore[no-untyped-def]
    r = post(api, path, body)
    assert r.status_code == status
    assert message in r.text
    assert r.json()["request_id"]


def _recent_count(api, user: str) -> int:  # type: ignore[no-untyped-def]
    r = post(api, "/recommend", {"user_id": user, "k": 1}, R)
    return int(r.json()["recent_events"])


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"item_id": "no-such-item"}, "unknown item_id"),
        ({"action": "teleport"}, "unknown action"),
        ({"timestamp": -1}, "must not be negative"),
        ({"timestamp": 4e12}, "in the future"),
        ({"item_id": "ünïcödé-☃"}, "unknown item_id"),
    ],
)
def test_invalid_events_are_rejected_whole_and_change_nothing(api, event, reason) -> None:  # type: ignore[no-untyped-def]
    user = f"bad-{reason.split()[0]}-{abs(hash(json.dumps(event))) % 10_000}"
    good = {"user_id": user, "item_id": "i1", "action": "view"}
    r = post(api, "/events", {"events": [good, {**good, **event}]})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail["invalid"] == [{"index": 1, "reason": detail["invalid"][0]["reason"]}]
    assert reason in detail["invalid"][0]["reason"]
    assert _recent_count(api, user) == 0  # the valid event of the batch was not written either


def test_nan_timestamp_is_rejected(api) -> None:  # type: ignore[no-untyped-def]
    raw = '{"events": [{"user_id": "nan", "item_id": "i1", "action": "view", "timestamp": NaN}]}'
    r = httpx.post(api.url + "/events", content=raw, headers={**W, "content-type": "application/json"})
    assert r.status_code == 422
    assert "finite" in r.text


def test_oversized_body_gets_413(api) -> None:  # type: ignore[no-untyped-def]
    events = [
        {"user_id": "big", "item_id": "i1", "action": "view", "event_id": f"{n:0128d}"} for n in range(1000)
    ]
    r = post(api, "/events", {"events": events})  # ~190 KB, limit 64 KiB
    assert r.status_code == 413
    assert "over 65536 bytes" in r.json()["detail"]

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"events": ['
        for _ in range(2000):
            yield b'{"user_id": "big", "item_id": "i1", "action": "view"},'
        yield b'{"user_id": "big", "item_id": "i1", "action": "view"}]}'

    r = httpx.post(api.url + "/events", content=chunks(), headers={**W, "content-type": "application/json"})
    assert r.status_code == 413  # no Content-Length: counted while reading
    assert _recent_count(api, "big") == 0


def _keyspace(url: str) -> dict[bytes, bytes | None]:
    import redis

    db = redis.Redis.from_url(url)
    return {k: db.dump(k) for k in db.scan_iter(match="api:*", count=1000)}


BAD_EVENTS = [
    {"user_id": "x" * 10_240, "item_id": "i1", "action": "view"},
    {"user_id": "ctl\x07", "item_id": "i1", "action": "view"},
    {"user_id": "ünï☃", "item_id": "i1\u0000", "action": "view"},
    {"user_id": "u", "item_id": "no-such-item", "action": "view"},
    {"user_id": "u", "item_id": "i1", "action": "view", "timestamp": -5},
    {"user_id": "u", "item_id": "i1", "action": "view", "timestamp": 1e300},
    {"user_id": "u", "item_id": "i1", "action": "view", "timestamp": "yesterday"},
    {"user_id": ["u"], "item_id": "i1", "action": "view"},
    {"user_id": "u", "item_id": "i1"},
    {"user_id": "u", "item_id": "i1", "action": "view", "event_id": "e" * 129},
]


def test_bad_input_gets_4xx_and_changes_nothing_in_redis(api, redis_server) -> None:  # type: ignore[no-untyped-def]
    good = {"user_id": "careful", "item_id": "i1", "action": "view"}
    post(api, "/events", {"events": [good]})
    before = _keyspace(redis_server.url)
    answers = [post(api, "/events", {"events": [good, bad]}) for bad in BAD_EVENTS]
    raw = '{"events": [{"user_id": "u", "item_id": "i1", "action": "view", "timestamp": NaN}]}'
    answers.append(
        httpx.post(api.url + "/events", content=raw, headers={**W, "content-type": "application/json"})
    )
    answers.append(httpx.post(api.url + "/events", content=b"\xff\xfe{", headers=W))
    answers.append(post(api, "/events", {"events": [good] * 1001}))
    answers.append(post(api, "/events", {"events": [good]}, R))
    answers.append(post(api, "/events", {"events": [good]}, {}))
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["detail"], r.text
    assert _keyspace(redis_server.url) == before


@pytest.mark.parametrize(
    ("path", "headers", "status", "message"),
    [
        ("/recommend", {}, 401, "missing API key"),
        ("/recommend", {"X-API-Key": "wrong"}, 401, "invalid API key"),
        ("/events", R, 403, "lacks the 'write' scope"),
        ("/admin/reload", W, 403, "lacks the 'admin' scope"),
        ("/recommend", {"Authorization": f"Bearer {READ_KEY}"}, 200, "items"),
    ],
)
def test_auth(api, path, headers, status, message) -> None:  # type: ignore[no-untyped-def]
    body = (
        {"user_id": "auth"}
        if path == "/recommend"
        else {"events": [{"user_id": "auth", "item_id": "i1", "action": "view"}]}
    )
    r = httpx.post(api.url + path, json=body if path != "/admin/reload" else {}, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.text


def test_keys_never_appear_in_logs(api) -> None:  # type: ignore[no-untyped-def]
    """The service logs every request at DEBUG (the api fixture's level); first check that the
    log really holds these requests, then that no key is in it."""
    denied = post(api, "/recommend", {"user_id": "log"}, {"X-API-Key": "wrong-secret-key"})
    assert denied.status_code == 401
    ok = post(api, "/events", {"events": [{"user_id": "log", "item_id": "i1", "action": "view"}]})
    time.sleep(0.3)
    log = api.log_path.read_text()
    for r in (denied, ok):
        assert f"[{r.headers['x-request-id']}]" in log  # the request was logged, with its id
    assert "POST /recommend -> 401" in log
    for secret in (READ_KEY, WRITE_KEY, ADMIN_KEY, "wrong-secret-key"):
        assert secret not in log


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        (
            "post",
            "/events",
            {"content": b"{not json", "headers": {**W, "content-type": "application/json"}},
            400,
        ),
        ("post", "/recommend", {"json": {"user_id": "u"}}, 401),
        (
            "post",
            "/events",
            {"json": {"events": [{"user_id": "u", "item_id": "i1", "action": "view"}]}, "headers": R},
            403,
        ),
        ("get", "/no-such-route", {}, 404),
        ("get", "/recommend", {}, 405),
        ("post", "/events", {"content": b"x" * 70_000, "headers": W}, 413),
        ("post", "/recommend", {"json": {"user_id": "u", "k": 0}, "headers": R}, 422),
    ],
)
def test_every_error_has_the_problem_shape_and_a_request_id(api, method, path, kwargs, status) -> None:  # type: ignore[no-untyped-def]
    r = getattr(httpx, method)(api.url + path, timeout=10, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]


def test_health_ready_metrics_model(api) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(api.url + "/readyz").json()
    assert ready["status"] == "ready"
    model = httpx.get(api.url + "/v1/model").json()
    assert model["version"] == ready["model_version"]
    assert model["num_buckets"] == 4
    recommend(api, "metrics-user")
    text = httpx.get(api.url + "/metrics").text
    for name in (
        "causerec_request_seconds_bucket",
        "causerec_batch_size_bucket",
        "causerec_engine_seconds_bucket",
        'causerec_redis_seconds_bucket{le="0.001",op="read"}',
        "causerec_events_total",
        "causerec_errors_total",
        "causerec_model_info",
        "causerec_query_cache_total",
        "causerec_store_conflicts_total",
        "causerec_store_token_builds_total",
    ):
        assert name in text
    assert httpx.get(api.url + "/openapi.json").json()["paths"].keys() >= {"/recommend", "/events"}


def test_concurrent_recommends_are_batched(api) -> None:  # type: ignore[no-untyped-def]
    def count() -> float:
        for line in httpx.get(api.url + "/metrics").text.splitlines():
            if line.startswith("causerec_batch_size_count"):
                return float(line.split()[-1])
        return 0.0

    before = count()
    threads = [threading.Thread(target=recommend, args=(api, f"batch-{i}")) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count() - before < 32  # some requests shared an engine call


def test_hot_reload_under_load_fails_no_request(api, second_bundle, tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    statuses: Counter[int] = Counter()
    versions: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(api.url + "/recommend", json={"user_id": "reload", "k": 5}, headers=R)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])

    workers = [threading.Thread(target=load) for _ in range(6)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    r = httpx.post(
        api.url + "/admin/reload",
        json={"bundle": str(second_bundle)},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join()
    assert set(statuses) == {200}, statuses
    assert r.json()["model_version"] in versions
    assert len(versions) == 2
    back = httpx.post(
        api.url + "/admin/reload",
        json={"bundle": str(tiny_bundle)},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=60,
    )
    assert back.status_code == 200


def test_corrupt_bundle_on_reload_is_rejected_and_old_model_keeps_serving(api, tiny_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    bad = shutil.copytree(tiny_bundle, tmp_path / "bad")
    (bad / "encoder.onnx").write_bytes(b"not a graph")
    version = httpx.get(api.url + "/v1/model").json()["version"]
    r = httpx.post(
        api.url + "/admin/reload", json={"bundle": str(bad)}, headers={"X-API-Key": ADMIN_KEY}, timeout=60
    )
    assert r.status_code == 422
    assert "checksum does not match" in r.json()["detail"]
    assert recommend(api, "after-bad-reload")["model_version"] == version


def test_user_state_lists_buckets_in_the_rules_order_ties_included(api, tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    """GET /users shows buckets most recently active first, ties between the categories of one item
    broken by the bundle's category id as the rule does, so the V buckets listed first are exactly
    the ones the history tokens read."""
    d = tiny_dataset
    cat_id = {d.categories.external(c): c for c in range(1, len(d.categories) + 1)}
    single = {
        c: next(i for i in range(1, d.num_items + 1) if d.item_categories[i] == (c,)) for c in cat_id.values()
    }
    multi = next(i for i in range(1, d.num_items + 1) if len(d.item_categories[i]) == 2)
    others = [c for c in single if c not in d.item_categories[multi]]
    # History (leaves the 8-event window): filler, the two-category item, then 3 other categories,
    # so the tie falls on ranks 4 and 5, across the V=4 boundary.
    history = [single[others[3]], multi, *(single[c] for c in others[:3])]
    items = history + [single[others[0]]] * 8
    events = [
        {"user_id": "lister", "item_id": d.items.external(i), "action": "view", "timestamp": 5000 + n}
        for n, i in enumerate(items)
    ]
    assert post(api, "/events", {"events": events}).json()["accepted"] == len(events)
    r = httpx.get(api.url + "/users/lister", headers=R, timeout=10)
    assert r.status_code == 200, r.text
    shown = [(cat_id[b["category"]], b["in_history_tokens"]) for b in r.json()["buckets"]]
    tie = sorted(d.item_categories[multi])
    assert [c for c, _ in shown] == [*reversed(others[:3]), *tie, others[3]]
    assert [read for _, read in shown] == [True] * 4 + [False] * 2
