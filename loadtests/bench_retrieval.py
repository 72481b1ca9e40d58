"""Retrieval for large catalogues: exact scoring (what the scorer graph does) against approximate
nearest-neighbour indexes from three libraries, side by side in one run.

    python -m loadtests.bench_retrieval --items 100000 1000000

Catalogues are synthetic: unit vectors (d=64) in 2,000 clusters (items of a category are alike),
queries are unit vectors near random clusters. Scoring is the inner product of unit vectors (the
model's cosine score). For each method: recall@20 against exact top-20, and ms per user at batch 1
and 32 on one thread (a serving worker's ONNX Runtime setting), the median of several passes.
Writes loadtests/results/bench_retrieval.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from causerec.machine import machine
from export.scorer import TWO_STAGE_UP_TO, scorer_model

K, D, CLUSTERS, QUERIES = 20, 64, 2000, 512
BUILD_THREADS = len(os.sched_getaffinity(0))  # indexes are built offline (export) on every core
Search = Callable[[np.ndarray, int], np.ndarray]  # (B, D) queries, k -> (B, k) ids


def catalogue(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items (n, D), queries (QUERIES, D)), all unit vectors."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLUSTERS, D)).astype(np.float32)
    items = centers[rng.integers(0, CLUSTERS, n)] + 0.6 * rng.normal(size=(n, D)).astype(np.float32)
    queries = centers[rng.integers(0, CLUSTERS, QUERIES)] + 0.8 * rng.normal(size=(QUERIES, D)).astype(
        np.float32
    )
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(items), unit(queries)


def exact_ort(items: np.ndarray, two_stage_up_to: int = TWO_STAGE_UP_TO) -> Search:
    """The bundle's scorer graph (export.scorer) over this catalogue, no exclusions; with
    ``two_stage_up_to=0`` the same graph with one TopK over every item (its earlier form)."""
    import onnxruntime as ort

    table = np.concatenate([np.zeros((1, D), np.float32), items]).T  # column 0: the padding item
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = scorer_model(np.ascontiguousarray(table), two_stage_up_to)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    none = np.full((1, 1), -1, np.int64)

    def search(q: np.ndarray, k: int) -> np.ndarray:
        feeds = {"query": q, "exclude": np.repeat(none, len(q), axis=0), "k": np.array([k], np.int64)}
        ids: np.ndarray = session.run(["ids"], feeds)[0]
        return ids - 1  # row i of ``items`` is item i + 1

    return search


# Each builder indexes the catalogue once and returns param -> search (the search-time knob).
Builder = Callable[[np.ndarray], Callable[[int], Search]]


def faiss_hnsw(items: np.ndarray) -> Callable[[int], Search]:
    import faiss

    faiss.omp_set_num_threads(BUILD_THREADS)
    index = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200
    index.add(items)
    faiss.omp_set_num_threads(1)

    def with_ef(ef: int) -> Search:
        index.hnsw.efSearch = ef
        return lambda q, k: index.search(q, k)[1]

    return with_ef


def faiss_ivf(items: np.ndarray) -> Callable[[int], Search]:
    import faiss

    faiss.omp_set_num_threads(BUILD_THREADS)
    nlist = int(4 * np.sqrt(len(items)))
    quantizer = faiss.IndexFlatIP(D)
    index = faiss.IndexIVFFlat(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(
        items[np.random.default_rng(1).choice(len(items), min(len(items), 50 * nlist), replace=False)]
    )
    index.add(items)
    faiss.omp_set_num_threads(1)

    def with_nprobe(nprobe: int) -> Search:
        index.nprobe = nprobe
        return lambda q, k: index.search(q, k)[1]

    return with_nprobe


def hnswlib_index(items: np.ndarray) -> Callable[[int], Search]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=D)
    index.init_index(max_elements=len(items), M=32, ef_construction=200)
    index.add_items(items, num_threads=BUILD_THREADS)
    index.set_num_threads(1)

    def with_ef(ef: int) -> Search:
        index.set_ef(ef)
        return lambda q, k: index.knn_query(q, k=k, num_threads=1)[0]

    return with_ef


def usearch_index(items: np.ndarray) -> Callable[[int], Search]:
    from usearch.index import Index

    index = Index(ndim=D, metric="ip", connectivity=32, expansion_add=200)
    index.add(np.arange(len(items)), items, threads=BUILD_THREADS)

    def with_expansion(ef: int) -> Search:
        index.expansion_search = ef
        return lambda q, k: index.search(q, k, threads=1).keys.reshape(len(q), -1)

    return with_expansion


def one_topk(items: np.ndarray) -> Callable[[int], Search]:
    search = exact_ort(items, two_stage_up_to=0)
    return lambda _param: search


METHODS: dict[str, tuple[Builder, list[int]]] = {
    "exact, one TopK over every item (the scorer before the two stages)": (one_topk, [0]),
    "faiss HNSW (M=32), efSearch": (faiss_hnsw, [32, 64, 128]),
    "faiss IVF-Flat (4 sqrt(n) lists), nprobe": (faiss_ivf, [8, 16, 32]),
    "hnswlib HNSW (M=32), ef": (hnswlib_index, [32, 64, 128]),
    "usearch HNSW (M=32), expansion": (usearch_index, [32, 64, 128]),
}


def per_user_ms(search: Search, queries: np.ndarray, batch: int, repeats: int = 5) -> float:
    """Median over ``repeats`` passes of (time to answer every query in batches) / queries."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for lo in range(0, len(queries), batch):
            search(queries[lo : lo + batch], K)
        runs.append(1000 * (time.perf_counter() - started) / len(queries))
    return statistics.median(runs)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def measure(n: int, only: list[str]) -> list[dict[str, Any]]:
    items, queries = catalogue(n)
    exact = exact_ort(items)
    truth = exact(queries, K)
    base = {b: per_user_ms(exact, queries, b) for b in (1, 32)}
    rows = [
        {
            "items": n,
            "method": "exact (the scorer graph: MatMul, two-stage TopK)",
            "param": None,
            "recall@20": 1.0,
            "build_s": 0.0,
            **{f"ms_per_user_batch{b}": round(v, 4) for b, v in base.items()},
        }
    ]
    for name, (build, params) in METHODS.items():
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        started = time.perf_counter()
        configure = build(items)
        built = time.perf_counter() - started
        for param in params:
            search = configure(param)
            times = {b: per_user_ms(search, queries, b) for b in (1, 32)}
            rows.append(
                {
                    "items": n,
                    "method": name,
                    "param": param,
                    "recall@20": round(recall(search(queries, K), truth), 4),
                    "build_s": round(built, 1),
                    **{f"ms_per_user_batch{b}": round(v, 4) for b, v in times.items()},
                    **{f"speedup_batch{b}": round(base[b] / times[b], 1) for b in (1, 32)},
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--methods", nargs="*", default=[], help="only methods whose name contains one")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_retrieval"))
    args = parser.parse_args()
    rows = [row for n in args.items for row in measure(n, args.methods)]
    record = {
        "command": "python -m loadtests.bench_retrieval --items "
        + " ".join(map(str, args.items))
        + (" --methods " + " ".join(args.methods) if args.methods else "")
        + f" --out {args.out}",
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "threads": 1,
        "rows": rows,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"Machine: {record['machine']}; searches on one thread, builds on {BUILD_THREADS}; "
        f"{QUERIES} queries, k={K}, d={D}. `{record['command']}`",
        "",
        "| items | method | param | recall@20 | ms/user (batch 1) | ms/user (batch 32) "
        "| speed-up (1 / 32) | build s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r.get('speedup_batch1', 1)}x / {r.get('speedup_batch32', 1)}x"
        lines.append(
            f"| {r['items']:,} | {r['method']} | {r['param'] or ''} | {r['recall@20']} | "
            f"{r['ms_per_user_batch1']} | {r['ms_per_user_batch32']} | {speed} | {r['build_s']} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
