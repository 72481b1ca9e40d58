"""Offline model latency: CAUSE (recent 64 + 8 history tokens) vs HSTU over the full history.

    python -m loadtests.bench_model --out loadtests/results/bench_model.json

For each history length (256, 512, 1,024, 2,048 events) and batch size (1, 32, 256) it times one
model call, encoder + scorer (the backbone, then every item of the catalogue scored and top-k inside
the graph), in ONNX Runtime and of the same modules in PyTorch eager, on random weights (latency
does not depend on them); the scorer alone (what a cached query state costs); and, for CAUSE, the
store's CPU work to fold one logged event at that history length (decode the state, apply the rule,
recompute the touched bucket's token, encode; no Redis round trip). CAUSE's input does not grow
with the history (1 + 8 + 2 x 64 = 137 tokens); HSTU-full's does (1 + 2 x n). Configurations whose
attention scores alone would exceed ``--max-attention-gb`` are recorded as skipped with the memory
they would need. Every cell is measured ``--repeats`` times (median of calls each): the report
gives the median of those and their range. Writes the JSON and a PNG of ms per call against history.

    python -m loadtests.bench_model --variants --batches 1 32

instead compares the variants at the longest history (loadtests/results/bench_variants.json): CAUSE
in each token layout, the memory compressor (C=8, S=8) and HSTU-full, plus the memory compressor's
store-side cost: one fold call (what each appended history event costs) and a whole refold of the
history (what a new model or an out-of-order event costs per user).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from causerec.machine import machine
from export.graphs import EncoderGraph, export_encoder_graph, export_fold_graph
from export.scorer import export_scorer_graph, scoring_columns
from model.cause import CauseRecommender
from model.config import TOKEN_LAYOUTS, ModelConfig


def make_model(
    mode: str, recent_len: int, num_items: int, layout: str = "interleaved", compressor: str = "cause"
) -> CauseRecommender:
    torch.manual_seed(0)
    cfg = ModelConfig(
        num_items=num_items,
        num_actions=2,
        num_categories=20,
        max_item_categories=2,
        mode=mode,
        recent_len=recent_len,
        num_buckets=8,
        bucket_size=32,
        d_model=64,
        num_layers=3,
        num_heads=8,
        dropout=0.0,
        max_rel_pos=4200,
        token_layout=layout,
        compressor=compressor,
        memory_slots=8,
        segment_len=8,
    )
    cats = torch.randint(1, 21, (num_items + 1, 2))
    return CauseRecommender(cfg, cats).eval()


def inputs(model: CauseRecommender, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = model.cfg
    length, v = cfg.recent_len, max(cfg.history_tokens, 1)
    return {
        "user_hash": rng.integers(0, cfg.user_hash_buckets, batch),
        "hist_tokens": rng.standard_normal((batch, v, cfg.d_model)).astype(np.float32) * 0.02,
        "hist_mask": np.ones((batch, v), bool),
        "hist_ts": np.full((batch, v), 1_600_000_000, np.int64),
        "items": rng.integers(1, cfg.num_items + 1, (batch, length)),
        "actions": rng.integers(1, 3, (batch, length)),
        "ts": 1_600_000_000 + np.sort(rng.integers(0, 10**6, (batch, length)), axis=1),
        "mask": np.ones((batch, length), bool),
    }


def scorer_inputs(model: CauseRecommender, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    query = rng.standard_normal((batch, model.cfg.d_model)).astype(np.float32)
    return {
        "query": query / np.linalg.norm(query, axis=1, keepdims=True),
        "exclude": rng.integers(1, model.cfg.num_items + 1, (batch, 64)),
        "k": np.array([20], np.int64),
    }


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


REPEATS = 5  # set from --repeats


def time_calls(fn: Any, min_calls: int = 5, min_s: float = 1.0, max_calls: int = 200) -> float:
    """Median ms of repeated calls of ``fn`` after one warm-up call."""
    fn()  # warm-up (allocations, kernel selection)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - started < min_s):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def timing(fn: Any, **kw: Any) -> dict[str, Any]:
    """The median of REPEATS measurements (each a median of calls) and their range: on a shared
    machine one measurement can be off by 2x, so the spread is reported, not hidden."""
    runs = sorted(time_calls(fn, **kw) for _ in range(REPEATS))
    return {
        "ms_median": round(statistics.median(runs), 3),
        "ms_min": round(runs[0], 3),
        "ms_max": round(runs[-1], 3),
        "repeats": REPEATS,
    }


def bench(
    mode: str,
    history: int,
    batches: list[int],
    num_items: int,
    threads: int,
    max_attention_gb: float,
    tmp: Path,
    layout: str = "interleaved",
    compressor: str = "cause",
) -> list[dict[str, Any]]:
    recent = 64 if mode == "cause" else history
    model = make_model(mode, recent, num_items, layout, compressor)
    stem = tmp / f"{mode}-{recent}-{layout}-{compressor}"
    export_encoder_graph(model, stem.with_suffix(".encoder.onnx"))
    export_scorer_graph(model, stem.with_suffix(".scorer.onnx"))
    encoder, scorer = (
        session(stem.with_suffix(".encoder.onnx"), threads),
        session(stem.with_suffix(".scorer.onnx"), threads),
    )
    names = {i.name for i in encoder.get_inputs()}
    torch.set_num_threads(threads)
    torch_encoder, table = EncoderGraph(model).eval(), scoring_columns(model)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        seq = model.cfg.seq_len
        need_gb = batch * model.cfg.num_heads * seq * seq * 4 / 1e9
        base = {
            "mode": mode,
            "token_layout": layout,
            "compressor": compressor if mode == "cause" else None,
            "history_events": history,
            "input_tokens": seq,
            "batch": batch,
        }
        scores = scorer_inputs(model, batch, rng)
        rows.append(
            {
                **base,
                "runtime": "onnxruntime",
                "graph": "scorer (cached query)",
                **timing(lambda f=scores: scorer.run(None, f)),
            }
        )
        if need_gb > max_attention_gb:
            for runtime in ("onnxruntime", "torch-eager"):
                rows.append(
                    {
                        **base,
                        "runtime": runtime,
                        "graph": "encoder + scorer",
                        "skipped": f"attention scores alone need {need_gb:.1f} GB",
                    }
                )
            continue
        every = inputs(model, batch, rng)
        feeds = {k: v for k, v in every.items() if k in names}  # the graph drops inputs it does not use
        tensors = {k: torch.from_numpy(v) for k, v in every.items()}
        exclude = torch.from_numpy(scores["exclude"])

        def run_ort(f: dict[str, np.ndarray] = feeds, sc: dict[str, np.ndarray] = scores) -> None:
            query = encoder.run(None, f)[0]
            scorer.run(None, {**sc, "query": query})

        def run_torch(t: dict[str, torch.Tensor] = tensors, e: torch.Tensor = exclude) -> None:
            with torch.no_grad():
                scores = torch_encoder(**t) @ table
                scores.scatter_(1, e.clamp(min=0), float("-inf")).topk(20, dim=1)

        for runtime, fn in (("onnxruntime", run_ort), ("torch-eager", run_torch)):
            rows.append({**base, "runtime": runtime, "graph": "encoder + scorer", **timing(fn)})
            print(json.dumps(rows[-1]), flush=True)  # noqa: T201 - progress of a long benchmark
    return rows


def bench_store_event(history: int, num_items: int) -> dict[str, Any]:
    """CAUSE: the store's CPU work to fold one logged event into the state of a user with ``history``
    events (decode the state, apply the rule, recompute the touched bucket's token with the history
    graph, encode the state and tokens), with the bundle's own code; Redis round trips are not
    included. A fold of k logged events decodes and encodes once for all k."""
    from export.graphs import export_history_graph
    from service.ids import StoreIds, _numbering
    from service.store_codec import KIND_BUCKETS, State, decode_state, encode_state, encode_tokens
    from service.user_state import ModelView, apply_events, build_tokens, token_job

    model = make_model("cause", 64, num_items)
    with tempfile.TemporaryDirectory() as tmp:
        export_history_graph(model, Path(tmp) / "history.onnx")
        graph = session(Path(tmp) / "history.onnx", 1)
    identity = _numbering(np.arange(1, num_items + 1))
    cats = model.item_cats.numpy()
    view = ModelView(
        "bench",
        64,
        8,
        32,
        64,
        StoreIds(identity, _numbering(np.arange(1, 3)), _numbering(np.arange(1, 21))),
        lambda i: tuple(int(c) for c in cats[i]),
        lambda c: c,
        lambda items, c: graph.run(None, {"bucket_items": items, "bucket_cats": c})[0],
    )
    rng = np.random.default_rng(0)
    events = [(t, int(i), 1) for t, i in enumerate(rng.integers(1, num_items + 1, history))]
    state = apply_events(State(KIND_BUCKETS, 64, 32), events, view, 16).state
    blob = encode_state(state)
    old = build_tokens(view, [token_job(state, None, set(), view)])[0]
    one = [(history + 1, 7, 1)]

    def append_one() -> None:
        before = decode_state(blob)
        after = apply_events(before, one, view, 16)
        tokens = build_tokens(view, [token_job(after.state, old, after.touched, view)])  # touched only
        encode_state(after.state), encode_tokens(tokens[0])

    return {
        "mode": "cause",
        "history_events": history,
        "what": "store CPU per folded event, one per fold",
        **timing(append_one),
    }


def bench_fold(history: int, batches: list[int], threads: int, tmp: Path) -> list[dict[str, Any]]:
    """The memory compressor's store-side cost in ONNX Runtime: one fold call per batch size, and a
    refold of a whole history (L=64 recent, the rest in segments of S) one segment after another."""
    model = make_model("cause", 64, 1000, compressor="memory")
    cfg = model.cfg
    path = tmp / "fold.onnx"
    export_fold_graph(model, path)
    folder = session(path, threads)
    rng = np.random.default_rng(0)

    def feeds(n: int) -> dict[str, np.ndarray]:
        s = cfg.segment_len
        return {
            "memory": rng.standard_normal((n, cfg.memory_slots, cfg.d_model)).astype(np.float32),
            "seg_items": rng.integers(1, cfg.num_items + 1, (n, s)),
            "seg_actions": rng.integers(1, 3, (n, s)),
            "seg_ts": np.sort(rng.integers(0, 10**6, (n, s)), axis=1),
            "seg_mask": np.ones((n, s), bool),
        }

    base = {"graph": "fold", "memory_slots": cfg.memory_slots, "segment_len": cfg.segment_len}
    rows = []
    for batch in batches:
        f = feeds(batch)
        rows.append(
            {
                **base,
                "what": "one fold call",
                "batch": batch,
                **timing(lambda f=f: folder.run(None, f)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)  # noqa: T201
    segments = -(-(history - 64) // cfg.segment_len)
    one = feeds(1)

    def refold() -> None:
        memory = one["memory"]
        for _ in range(segments):
            memory = folder.run(None, {**one, "memory": memory})[0]

    rows.append(
        {
            **base,
            "what": f"refold {history - 64} history events ({segments} segments)",
            "batch": 1,
            **timing(refold, min_calls=3, max_calls=20),
        }
    )
    print(json.dumps(rows[-1]), flush=True)  # noqa: T201
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--histories", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-attention-gb", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5, help="measurements per cell (median and range)")
    parser.add_argument("--out", type=Path, default=None, help="default: loadtests/results/<bench>.json")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="instead: CAUSE (L=64) in each token layout, the memory compressor and HSTU-full at the "
        "longest history, plus the memory compressor's fold costs",
    )
    args = parser.parse_args()
    global REPEATS
    REPEATS = args.repeats
    default_name = "bench_variants.json" if args.variants else "bench_model.json"
    args.out = args.out or Path("loadtests/results") / default_name
    rows = []
    if args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            history = max(args.histories)
            variants = [(layout, "cause") for layout in TOKEN_LAYOUTS] + [("interleaved", "memory")]
            for layout, compressor in variants:
                cause = bench(
                    "cause",
                    64,
                    args.batches,
                    args.items,
                    args.threads,
                    args.max_attention_gb,
                    Path(tmp),
                    layout,
                    compressor,
                )
                rows += [{**r, "history_events": history} for r in cause]
            rows += bench_fold(history, args.batches, args.threads, Path(tmp))
            rows += bench(
                "hstu-full", history, [1], args.items, args.threads, args.max_attention_gb, Path(tmp)
            )
        write(args, rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for history in args.histories:  # CAUSE's graph is the same at every length: measured at each anyway
            rows += bench(
                "cause", history, args.batches, args.items, args.threads, args.max_attention_gb, Path(tmp)
            )
            rows.append(bench_store_event(history, args.items))
            print(json.dumps(rows[-1]), flush=True)  # noqa: T201
            rows += bench(
                "hstu-full", history, args.batches, args.items, args.threads, args.max_attention_gb, Path(tmp)
            )
    write(args, rows)
    plot(rows, args.out.with_suffix(".png"))


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    result = {
        "command": "python -m loadtests.bench_model "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("out", "variants", "repeats")
        )
        + f" --repeats {args.repeats}"
        + (" --variants" if args.variants else ""),
        "machine": machine(),
        "device": "cpu",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """ms per call against history length, both modes, ONNX Runtime: the paper's Figure 1 in our stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (mode, batch) in enumerate([("cause", 1), ("hstu-full", 1), ("cause", 32), ("hstu-full", 32)]):
        pts = sorted(
            (r["history_events"], r["ms_median"])
            for r in rows
            if r.get("mode") == mode
            and r.get("batch") == batch
            and r.get("runtime") == "onnxruntime"
            and r.get("graph") == "encoder + scorer"
            and "ms_median" in r
        )
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                "o-" if batch == 1 else "s--",
                color=f"C{i % 2}",
                label=f"{mode}, batch {batch}",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("history length (events)")
    ax.set_ylabel("ms per call (ONNX Runtime, CPU)")
    ax.set_title("Model cost vs history length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
