"""ONNX Runtime vs PyTorch on the same trained weights.

Tolerances: fp32 scores go through ~3 layers of matmuls and LayerNorms whose reduction order
differs between the two runtimes; with logits scaled by 1/temperature (20x) such differences stay
around 1e-5, so 1e-4 is tight enough to catch a wrong op yet loose enough for reduction order.
Bucket tokens are one gather + mean + add: 1e-5 covers summation order. A memory fold is three
small HSTU layers over C + S + C tokens: 1e-5 as well (measured ~5e-7).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.bucketing import UserState, split_recent
from model.cause import model_inputs
from model.evaluate import to_tensors
from model.samples import SampleBuilder
from model.segments import SEGMENT_KEYS
from model.train import load_model
from service.bundle import load_bundle
from service.engine import CUDA, Engine, UserFeatures
from service.ids import in_catalogue_order
from service.memory_store import EXCLUDE_ITEMS, extend_job, run_folds
from service.runtime import make_view


def _features(inputs: dict[str, torch.Tensor | None], i: int) -> UserFeatures:
    m = inputs["mask"][i].numpy()  # type: ignore[index]
    user = UserFeatures(
        int(inputs["user_hash"][i]),  # type: ignore[index]
        inputs["items"][i].numpy()[m],  # type: ignore[index]
        inputs["actions"][i].numpy()[m],  # type: ignore[index]
        inputs["ts"][i].numpy()[m],  # type: ignore[index]
    )
    if inputs["hist_tokens"] is not None:
        user.hist_tokens = inputs["hist_tokens"][i].numpy()
        user.hist_mask = inputs["hist_mask"][i].numpy()  # type: ignore[index]
        user.hist_ts = inputs["hist_ts"][i].numpy()  # type: ignore[index]
    return user


def test_onnx_scores_and_topk_match_torch(tiny_run, tiny_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    assert_onnx_matches_torch(tiny_run, tiny_bundle, tiny_dataset, 120)


def assert_onnx_matches_torch(run, bundle, dataset, n_users: int) -> None:  # type: ignore[no-untyped-def]
    """Scores within 1e-4 and the same top-k (up to exact ties) for the first test users."""
    model = load_model(run)
    engine = Engine(load_bundle(bundle), device="cpu")
    builder = SampleBuilder(dataset, model.cfg)
    split = dataset.split("test")
    rows, ends = split.users[:n_users], split.input_end[:n_users]
    tensors = to_tensors(builder.batch(rows, ends, with_targets=False), "cpu")
    with torch.no_grad():
        inputs = model_inputs(model, tensors)  # history tokens built as training builds them
        scores = model.score_all(**inputs).numpy()
    k = 20
    users, seen = [], []
    for i, (row, end) in enumerate(zip(rows, ends, strict=True)):
        seen.append(builder.seen_items(int(row), int(end))[:5])  # exclusions travel through the graph too
        scores[i, seen[-1]] = -np.inf
        users.append(_features(inputs, i))
    queries = engine.encode(users)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    ranked = engine.score(queries, seen, k)
    assert len(ranked) == n_users
    worst = 0.0
    for i, r in enumerate(ranked):
        expected = np.sort(scores[i])[::-1][:k]
        worst = max(worst, float(np.abs(r.scores - expected).max()))
        np.testing.assert_allclose(scores[i, r.items], r.scores, atol=1e-4)
        # Same ids up to exact ties: every returned id scores at least the k-th best torch score.
        assert (
            set(r.items) == set(np.argsort(-scores[i], kind="stable")[:k])
            or scores[i, r.items].min() >= expected[-1] - 1e-4
        )
        assert not set(r.items) & set(seen[i].tolist())
    assert worst <= 1e-4


def test_memory_bundle_scores_and_topk_match_torch(memory_run, memory_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    assert_onnx_matches_torch(memory_run, memory_bundle, tiny_dataset, 60)


def test_fold_graph_matches_torch_fold(memory_run, memory_bundle):  # type: ignore[no-untyped-def]
    """Full, open (masked tail) and one-event segments from random memories."""
    model = load_model(memory_run)
    engine = Engine(load_bundle(memory_bundle), device="cpu")
    cfg, rng = model.cfg, np.random.default_rng(0)
    n, s = 6, cfg.segment_len
    memory = rng.normal(size=(n, cfg.memory_slots, cfg.d_model)).astype(np.float32)
    lengths = np.array([s, s, s - 1, 1, 2, s])
    segments = {
        "seg_items": rng.integers(1, cfg.num_items + 1, (n, s)),
        "seg_actions": rng.integers(1, cfg.num_actions + 1, (n, s)),
        "seg_ts": np.sort(rng.integers(0, 10**6, (n, s)), axis=1),
        "seg_mask": np.arange(s)[None, :] < lengths[:, None],
    }
    got = engine.fold(memory, segments)
    torch_in = {k: torch.from_numpy(v) for k, v in segments.items()}
    with torch.no_grad():
        expected = model.compressor.fold(
            model, torch.from_numpy(memory), *(torch_in[k] for k in SEGMENT_KEYS)
        ).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(engine.initial_memory, model.compressor.initial.detach().numpy())


def test_store_path_memory_tokens_match_torch(memory_run, memory_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    """The store's folding, one evicted event at a time (extend_job / run_folds, as appends run it),
    equals the memory the model folds over the whole history."""
    model = load_model(memory_run)
    engine = Engine(load_bundle(memory_bundle), device="cpu")
    store_view = make_view(engine, in_catalogue_order(engine.bundle.catalog))  # store ids = model ids
    view = store_view.memory
    assert view is not None
    builder = SampleBuilder(tiny_dataset, model.cfg)
    for row in range(0, 40):
        end = int(tiny_dataset.user_offsets[row + 1])
        history, _ = split_recent(builder.events_before(row, end), model.cfg.recent_len)
        record, tokens, exclude = None, None, []
        for e in history:
            record, tokens = run_folds(store_view, [extend_job(view, record, tokens, [e], 1)])[0]
            exclude = [int(i) for i in tokens.exclude]
        tensors = to_tensors(builder.batch(np.array([row]), np.array([end]), with_targets=False), "cpu")
        with torch.no_grad():
            expected = model_inputs(model, tensors)["hist_tokens"][0].numpy()  # type: ignore[index]
        if not history:
            assert tokens is None
            continue
        assert tokens is not None
        assert record.folded == len(history) - len(history) % model.cfg.segment_len
        np.testing.assert_allclose(tokens.tokens, expected, atol=1e-5)
        assert exclude == list(dict.fromkeys(e.item for e in reversed(history)))[:EXCLUDE_ITEMS]


def test_store_path_history_tokens_match_torch(tiny_run, tiny_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    model = load_model(tiny_run)
    engine = Engine(load_bundle(tiny_bundle), device="cpu")
    cfg = model.cfg
    builder = SampleBuilder(tiny_dataset, cfg)
    for row in range(0, 100):
        events = builder.events_before(row, int(tiny_dataset.user_offsets[row + 1]))
        state = UserState(cfg.recent_len, cfg.bucket_size)  # the store's incremental form
        for e in events:
            state.append(e, tiny_dataset.categories_of)
        buckets = state.top(cfg.num_buckets)
        items = np.zeros((len(buckets), cfg.bucket_size), np.int64)
        for j, b in enumerate(buckets):
            items[j, : len(b.items)] = b.items
        cats = np.array([b.category for b in buckets], np.int64)
        got = engine.bucket_tokens(items, cats)
        batch = builder.batch(
            np.array([row]), np.array([tiny_dataset.user_offsets[row + 1]]), with_targets=False
        )
        with torch.no_grad():
            expected = model.history_tokens(
                torch.from_numpy(batch["bucket_items"]), torch.from_numpy(batch["bucket_cats"])
            )[0].numpy()
        np.testing.assert_allclose(got, expected[: len(buckets)], atol=1e-5)


def _random_users(
    rng: np.random.Generator, lengths: tuple[int, ...], seen: int, user_rows: int
) -> tuple[list[UserFeatures], list[np.ndarray | None]]:
    """Users with random recent windows of these lengths, and ``seen`` random items each to exclude."""
    users = [
        UserFeatures(
            int(rng.integers(0, user_rows)),
            rng.integers(1, 300, n),
            rng.integers(1, 3, n),
            np.sort(rng.integers(0, 10**6, n)),
        )
        for n in lengths
    ]
    return users, [rng.integers(1, 300, seen) for _ in users]


def test_io_binding_path_gives_the_same_top_k(tiny_bundle, tiny_dataset):  # type: ignore[no-untyped-def]
    """The IO-binding path (the default on CUDA) runs on the CPU provider too: same answers."""
    bundle = load_bundle(tiny_bundle)
    plain, bound = Engine(bundle, device="cpu"), Engine(bundle, device="cpu", io_binding=True)
    users, seen = _random_users(
        np.random.default_rng(0), (0, 3, 8), seen=3, user_rows=bundle.manifest.user_hash_buckets
    )
    for a, b in zip(plain.rank(users, seen, 10), bound.rank(users, seen, 10), strict=True):
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a GPU")
def test_cuda_provider_ranks_like_the_cpu(tiny_bundle):  # type: ignore[no-untyped-def]
    """The CUDA path (IO binding on by default) answers as the CPU path does. CUDA may use TF32 in
    its matmuls, so scores agree to 1e-2 (logits are ~20x a cosine), and two items may change places
    only where their scores are that close."""
    bundle = load_bundle(tiny_bundle)
    cpu, cuda = Engine(bundle, device="cpu"), Engine(bundle, device="cuda")
    assert (cuda.device, cuda.io_binding) == ("cuda", True)
    users, seen = _random_users(
        np.random.default_rng(1), (0, 1, 5, 16, 40), seen=4, user_rows=bundle.manifest.user_hash_buckets
    )
    for a, b, excluded in zip(cpu.rank(users, seen, 20), cuda.rank(users, seen, 20), seen, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-2)
        last = len(a.items) - 1  # its rival is the first item past k, which neither answer shows
        for i in np.flatnonzero(a.items[:last] != b.items[:last]):
            gaps = [abs(a.scores[j] - a.scores[i]) for j in (i - 1, i + 1) if 0 <= j <= last]
            assert min(gaps) < 2e-2, (i, a.scores)
        assert not set(b.items.tolist()) & set(np.asarray(excluded).tolist())
