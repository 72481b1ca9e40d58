"""End to end with a memory-compressor bundle: a real uvicorn process, a real Redis, real ONNX
Runtime; /recommend answers what the torch model ranks for the same events."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from model.bucketing import Event, split_recent
from model.cause import model_inputs
from model.samples import pad_recent, pad_segments, stack
from model.train import load_model as load_torch_model
from model.user_hash import user_hash_bucket

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def memory_api(memory_bundle, redis_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    from loadtests.service_process import ServiceProcess

    log = tmp_path_factory.mktemp("memory-api") / "service.log"
    with ServiceProcess(memory_bundle, redis_server.url, log, key_prefix="memapi") as proc:
        yield proc


def torch_top(memory_run, user: str, events: list[Event], k: int) -> tuple[list[int], np.ndarray]:  # type: ignore[no-untyped-def]
    """Top-k internal ids and scores from the torch model, every seen item excluded."""
    model = load_torch_model(memory_run)
    cfg = model.cfg
    history, recent = split_recent(events, cfg.recent_len)
    sample = {
        **pad_recent(recent, cfg.recent_len),
        **pad_segments(history, cfg.segment_len),
        "user_hash": np.int64(user_hash_bucket(user, cfg.user_hash_buckets)),
    }
    batch = {name: torch.from_numpy(np.asarray(v)) for name, v in stack([sample]).items()}
    with torch.no_grad():
        scores = model.score_all(**model_inputs(model, batch))[0].numpy()
    scores[[e.item for e in events]] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return top.tolist(), scores


def test_recommendations_equal_the_torch_model_on_the_same_events(
    memory_api, memory_run, tiny_dataset
) -> None:  # type: ignore[no-untyped-def]
    d = tiny_dataset
    user, n = "mem-e2e", 43  # L = 8 recent, 35 history events: 8 full segments of 4 + 3 open
    internal = [1 + (i * 37) % d.num_items for i in range(n)]
    body = {
        "events": [
            {
                "user_id": user,
                "item_id": d.items.external(i),
                "action": d.actions.external(1 + j % 2),
                "timestamp": 5000 + j,
            }
            for j, i in enumerate(internal)
        ]
    }
    for lo in range(0, n, 10):  # several appends: the memory is folded incrementally
        chunk = {"events": body["events"][lo : lo + 10]}
        assert httpx.post(memory_api.url + "/events", json=chunk, timeout=10).status_code == 200

    r = httpx.post(memory_api.url + "/recommend", json={"user_id": user, "k": 20}, timeout=10)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["history_tokens"] == 4
    assert got["recent_events"] == 8
    events = [Event(5000 + j, j, i, 1 + j % 2) for j, i in enumerate(internal)]
    top, scores = torch_top(memory_run, user, events, 20)
    ids = [d.items.internal(x["item_id"]) for x in got["items"]]
    np.testing.assert_allclose([x["score"] for x in got["items"]], scores[ids], atol=1e-4)
    assert set(ids) == set(top) or scores[ids].min() >= scores[top[-1]] - 1e-4
    assert not set(ids) & set(internal)  # history items are excluded too, not only the recent window

    model = httpx.get(memory_api.url + "/v1/model", timeout=10).json()
    assert (model["compressor"], model["num_buckets"], model["segment_len"]) == ("memory", 4, 4)
