"""The scorer graph's two-stage top-k selects exactly what one TopK over every item selects."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.scorer import CHUNK, IR_VERSION, TWO_STAGE_UP_TO, scorer_model

ITEMS, DIM = 60_000, 16
TIED = [7, *range(40_000, 40_010)]  # equal columns in chunks far apart
ANCHOR, CROSS = 40_030, [100, 40_040]  # CROSS: equal columns, the higher id in ANCHOR's chunk


def item_table() -> np.ndarray:
    table = np.random.default_rng(0).standard_normal((DIM, ITEMS + 1)).astype(np.float32)
    table /= np.linalg.norm(table, axis=0)  # unit-norm, as the model's: an item's own column wins
    table[:, TIED] = table[:, 7:8]
    table[:, 12:20] = table[:, 11:12]  # equal columns inside one chunk
    near = table[:, ANCHOR] + 0.1 * table[:, 1]
    table[:, CROSS] = (near / np.linalg.norm(near))[:, None]
    return table


def session(table: np.ndarray, two_stage_up_to: int = TWO_STAGE_UP_TO) -> ort.InferenceSession:
    model = scorer_model(table, two_stage_up_to)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graphs() -> tuple[np.ndarray, ort.InferenceSession, ort.InferenceSession, np.ndarray]:
    table = item_table()
    queries = np.random.default_rng(1).standard_normal((8, DIM)).astype(np.float32)
    queries[0] = table[:, 7]  # ranks the tied columns first
    queries[2] = table[:, ANCHOR]  # ANCHOR's chunk is picked before the chunk of CROSS[0]
    return table, session(table), session(table, two_stage_up_to=0), queries


def exclusions(seed: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    exclude = np.full((rows, 300), -1, np.int64)  # -1 pads, as the engine sends them
    for i in (1, *range(3, rows)):
        n = int(rng.integers(0, 300))
        exclude[i, :n] = rng.integers(1, ITEMS + 1, n)  # duplicates included
    exclude[1, :5] = TIED[1:6]
    return exclude


@pytest.mark.parametrize("k", [1, 4, 20, 63, 200])
def test_two_stages_give_the_same_ids_and_scores_as_one_topk(graphs, k) -> None:  # type: ignore[no-untyped-def]
    _, two, one, queries = graphs
    assert k * CHUNK * TWO_STAGE_UP_TO <= ITEMS, "these k take the two-stage branch"
    feeds = {"query": queries, "exclude": exclusions(k, len(queries)), "k": np.array([k])}
    got, want = two.run(None, feeds), one.run(None, feeds)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_top_k_is_the_exact_ranking_with_exclusions_and_ties_to_the_lower_id(graphs) -> None:  # type: ignore[no-untyped-def]
    table, two, _, queries = graphs
    exclude = exclusions(5, len(queries))
    scores, ids = two.run(None, {"query": queries, "exclude": exclude, "k": np.array([20])})
    for i, q in enumerate(queries):
        expected = q @ table
        expected[0] = -np.inf
        expected[exclude[i][exclude[i] > 0]] = -np.inf
        assert 0 not in ids[i]
        assert not set(ids[i]) & set(exclude[i].tolist())
        np.testing.assert_allclose(scores[i], expected[ids[i]], rtol=1e-5)
        np.testing.assert_allclose(scores[i], np.sort(expected)[::-1][:20], rtol=1e-5)
        for a, b, sa, sb in zip(ids[i][:-1], ids[i][1:], scores[i][:-1], scores[i][1:], strict=True):
            assert sa > sb or a < b, "equal scores come lower id first"
    assert list(ids[0][: len(TIED)]) == TIED
    assert list(ids[2][:3]) == [ANCHOR, *CROSS]


def test_a_k_past_the_two_stage_limit_gives_the_one_topk_answer(graphs) -> None:  # type: ignore[no-untyped-def]
    _, two, one, queries = graphs
    assert 1_000 * CHUNK * TWO_STAGE_UP_TO > ITEMS, "this k takes the If's one-TopK branch"
    feeds = {"query": queries, "exclude": exclusions(9, len(queries)), "k": np.array([1_000])}
    got, want = two.run(None, feeds), one.run(None, feeds)
    np.testing.assert_array_equal(got[1], want[1])


def test_fewer_candidates_than_k_come_back_as_minus_infinity() -> None:
    table = np.random.default_rng(0).standard_normal((DIM, 301)).astype(np.float32)
    exclude = np.arange(1, 299, dtype=np.int64)[None]  # 2 items of 300 left
    scores, ids = session(table).run(
        None, {"query": table[:, 299][None], "exclude": exclude, "k": np.array([5])}
    )
    assert sorted(ids[0][:2]) == [299, 300]
    assert np.isfinite(scores[0][:2]).all()
    assert np.isneginf(scores[0][2:]).all()


def test_the_graph_keeps_an_ir_version_older_onnxruntime_reads() -> None:
    """onnx 1.23 stamps IR 14, which onnxruntime-gpu 1.31 refuses ("max supported IR version: 13"):
    seen on the GPU machine. The graph must not take the installed onnx package's IR version."""
    model = scorer_model(np.ones((300, 8), np.float32), TWO_STAGE_UP_TO)
    assert model.ir_version == IR_VERSION == 8
