"""Offline model latency: CAUSE (recent 64 + 8 history tokens) vs HSTU over the full history.

    python -m loadtests.bench_model --out loadtests/results/bench_model.json

For each history length (256, 512, 1,024, 2,048 events) and batch size (1, 32, 256) it times one call
of the exported ranking graph (scoring against the whole catalogue and top-k inside) in ONNX
Runtime and of the same module in PyTorch eager, on random weights (latency does not depend on
them). CAUSE's input does not grow with the history (1 + 8 + 2 x 64 = 137 tokens); HSTU-full's does
(1 + 2 x n). Configurations whose attention scores alone would exceed ``--max-attention-gb`` are
recorded as skipped with the memory they would need, rather than run. Medians over repeated calls.
Writes the JSON and a PNG of ms per call against history length.
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

from export.graphs import ScoringGraph, export_ranking_graph
from model.cause import CauseRecommender
from model.config import TOKEN_LAYOUTS, ModelConfig
from model.results import machine


def make_model(mode: str, recent_len: int, num_items: int, layout: str = "interleaved") -> CauseRecommender:
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
        "exclude": rng.integers(1, cfg.num_items + 1, (batch, 64)),
        "k": np.array([20], np.int64),
    }


def time_calls(fn: Any, min_calls: int = 5, min_s: float = 2.0, max_calls: int = 200) -> list[float]:
    fn()  # warm-up (allocations, kernel selection)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - started < min_s):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return times


def bench(
    mode: str,
    history: int,
    batches: list[int],
    num_items: int,
    threads: int,
    max_attention_gb: float,
    tmp: Path,
    layout: str = "interleaved",
) -> list[dict[str, Any]]:
    recent = 64 if mode == "cause" else history
    model = make_model(mode, recent, num_items, layout)
    path = tmp / f"{mode}-{recent}-{layout}.onnx"
    export_ranking_graph(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    torch.set_num_threads(threads)
    scorer = ScoringGraph(model).eval()
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        seq = model.cfg.seq_len
        need_gb = batch * model.cfg.num_heads * seq * seq * 4 / 1e9
        base = {
            "mode": mode,
            "token_layout": layout,
            "history_events": history,
            "input_tokens": seq,
            "batch": batch,
        }
        if need_gb > max_attention_gb:
            for runtime in ("onnxruntime", "torch-eager"):
                rows.append(
                    {**base, "runtime": runtime, "skipped": f"attention scores alone need {need_gb:.1f} GB"}
                )
            continue
        feeds = inputs(model, batch, rng)
        ort_feeds = {k: v for k, v in feeds.items() if k in names}
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items() if k != "k"}

        def run_torch(t: dict[str, torch.Tensor] = tensors) -> None:
            with torch.no_grad():
                scorer(**t).topk(20, dim=1)

        for runtime, fn in (
            ("onnxruntime", lambda f=ort_feeds: session.run(None, f)),
            ("torch-eager", run_torch),
        ):
            times = time_calls(fn)
            rows.append(
                {
                    **base,
                    "runtime": runtime,
                    "ms_median": round(statistics.median(times), 3),
                    "ms_p90": round(float(np.percentile(times, 90)), 3),
                    "calls": len(times),
                }
            )
            print(json.dumps(rows[-1]), flush=True)  # noqa: T201 - progress of a long benchmark
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--histories", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-attention-gb", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=None, help="default: loadtests/results/<bench>.json")
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="instead: CAUSE (L=64, V=8) in each token layout next to HSTU-full at the longest history",
    )
    args = parser.parse_args()
    default_name = "bench_layouts.json" if args.layouts else "bench_model.json"
    args.out = args.out or Path("loadtests/results") / default_name
    rows = []
    if args.layouts:
        with tempfile.TemporaryDirectory() as tmp:
            history = max(args.histories)
            for layout in TOKEN_LAYOUTS:
                cause = bench(
                    "cause",
                    64,
                    args.batches,
                    args.items,
                    args.threads,
                    args.max_attention_gb,
                    Path(tmp),
                    layout,
                )
                rows += [{**r, "history_events": history} for r in cause]
            rows += bench(
                "hstu-full", history, [1], args.items, args.threads, args.max_attention_gb, Path(tmp)
            )
        write(args, rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cause = bench("cause", 64, args.batches, args.items, args.threads, args.max_attention_gb, Path(tmp))
        for history in args.histories:  # CAUSE's model call is the same whatever the history length
            rows += [{**r, "history_events": history} for r in cause]
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
            if k not in ("out", "layouts")
        )
        + (" --layouts" if args.layouts else ""),
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
            if r["mode"] == mode
            and r["batch"] == batch
            and r["runtime"] == "onnxruntime"
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
