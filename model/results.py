"""The quality table (docs/RESULTS.md): HSTU vs HSTU-full vs CAUSE on MovieLens, 3 seeds.

    python -m model.results --data-dir ../shared/data/ml-100k --out docs/results

Each run's metrics land in OUT/runs/<row>-s<seed>.json, so an interrupted sweep resumes where it
stopped; the table and the plot are rebuilt from whatever runs exist. Early stopping uses the
validation split only; the table reports the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROWS: list[tuple[str, dict[str, Any]]] = [
    *((f"hstu L={n}", {"mode": "hstu", "recent_len": n}) for n in (8, 16, 32, 64)),
    ("hstu-full (cap 256)", {"mode": "hstu-full", "recent_len": 256}),
    *((f"cause L={n}", {"mode": "cause", "recent_len": n}) for n in (8, 16, 32)),
    ("cause L=16, K-Means categories", {"mode": "cause", "recent_len": 16, "kmeans": 18}),
    ("cause L=16, no W_align", {"mode": "cause", "recent_len": 16, "use_align": False}),
    ("cause L=16, no action loss", {"mode": "cause", "recent_len": 16, "action_weight": 0.0}),
    # Chosen by the tuning probes below (validation NDCG@10 only), then run like every other row.
    ("cause L=16, V=4 (tuned on validation)", {"mode": "cause", "recent_len": 16, "num_buckets": 4}),
    ("cause L=16, stacked tokens", {"mode": "cause", "recent_len": 16, "token_layout": "stacked"}),
    ("cause L=16, late-fusion tokens", {"mode": "cause", "recent_len": 16, "token_layout": "late-fusion"}),
    ("cause L=16, attn-mvp tokens", {"mode": "cause", "recent_len": 16, "token_layout": "attn-mvp"}),
    ("L=16, memory compressor (Rec2PM)", {"mode": "cause", "recent_len": 16, "compressor": "memory"}),
]
# Probes of CAUSE's V and G, judged on the validation split only (the table above reports test).
TUNING: list[tuple[str, dict[str, Any]]] = [
    *((f"cause L=16, V={v}", {"mode": "cause", "recent_len": 16, "num_buckets": v}) for v in (4, 16)),
    *((f"cause L=16, G={g}", {"mode": "cause", "recent_len": 16, "bucket_size": g}) for g in (8, 64)),
    ("cause L=16, V=4, G=8", {"mode": "cause", "recent_len": 16, "num_buckets": 4, "bucket_size": 8}),
]
METRICS = ("ndcg@1", "ndcg@10", "ndcg@20", "mrr")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return (
        f"{cpu}, {nproc} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def run_one(
    name: str, spec: dict[str, Any], seed: int, data_dir: Path, out: Path, epochs: int
) -> dict[str, Any]:
    from model.data import load_dataset
    from model.train import TrainConfig, train

    spec = dict(spec)
    kmeans = spec.pop("kmeans", None)
    action_weight = spec.pop("action_weight", 1.0)
    categories_csv = None
    if kmeans:
        categories_csv = kmeans_categories(data_dir, out, seed, kmeans, epochs)
    data = load_dataset("ml-100k", data_dir, categories_csv=categories_csv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            epochs=epochs,
            seed=seed,
            action_loss_weight=action_weight,
            patience=5,
            data={"dataset": "ml-100k", "data_dir": str(data_dir), "options": {}},
        )
        result = train(data, spec, cfg, Path(tmp) / "run", progress=False)
    return {
        "row": name,
        "seed": seed,
        "test": result["test"],
        "seq_len": result["seq_len"],
        "train_s_per_epoch": result["train_s_per_epoch"],
        "epochs_run": result["epochs_run"],
        "best_epoch": result["best_valid"]["epoch"],
        "valid": {k: v for k, v in result["best_valid"].items() if k.startswith(("ndcg", "mrr", "hr"))},
    }


def kmeans_categories(data_dir: Path, out: Path, seed: int, k: int, epochs: int) -> Path:
    """Cluster the item embeddings of an `hstu L=32` model trained with the same seed."""
    from sklearn.cluster import KMeans

    from model.data import load_dataset
    from model.train import TrainConfig, load_model, train

    path = out / "runs" / f"kmeans{k}-s{seed}.csv"
    if path.is_file():
        return path
    data = load_dataset("ml-100k", data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        train(
            data,
            {"mode": "hstu", "recent_len": 32},
            TrainConfig(epochs=epochs, seed=seed),
            Path(tmp) / "r",
            progress=False,
        )
        weights = load_model(Path(tmp) / "r").item_emb.weight.detach().numpy()[1:]
    weights = weights / np.linalg.norm(weights, axis=1, keepdims=True).clip(1e-9)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(weights)
    lines = ["item_id,categories"] + [f"{data.items.external(i + 1)},k{c}" for i, c in enumerate(labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def measure_costs(data_dir: Path, out: Path, only: list[str] | None) -> None:
    """One epoch of each row's model (or of the ``only`` rows, kept beside the earlier ones), alone
    on the machine: train s/epoch and test forward ms per 128 users (cost depends on the
    architecture and the data, not on the trained weights)."""
    import torch

    from model.data import load_dataset
    from model.evaluate import evaluate
    from model.samples import SampleBuilder
    from model.train import TrainConfig, load_model, train

    torch.set_num_threads(int(subprocess.run(["nproc"], capture_output=True, text=True).stdout))
    data = load_dataset("ml-100k", data_dir)
    rows = (costs(out) or {}) if only else {}
    for name, spec in ROWS:
        if only and name not in only:
            continue
        spec = {k: v for k, v in spec.items() if k not in ("kmeans", "action_weight")}
        with tempfile.TemporaryDirectory() as tmp:
            result = train(data, spec, TrainConfig(epochs=1, seed=0), Path(tmp) / "r", progress=False)
            model = load_model(Path(tmp) / "r")
        # A single timed pass over the test users varies up to 2x on a shared VM: the fastest of 3.
        builder, test = SampleBuilder(data, model.cfg), data.split("test")
        forward_ms = min(float(evaluate(model, builder, test)["ms_per_batch_128"]) for _ in range(3))
        rows[name] = {
            "train_s_per_epoch": round(result["train_s_per_epoch"], 2),
            "ms_per_batch_128": round(forward_ms, 2),
            "seq_len": result["seq_len"],
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        print(name, rows[name], flush=True)
    record = {
        "command": f"python -m model.results --data-dir {data_dir} --costs",
        "machine": machine(),
        "rows": rows,
    }
    (out / "costs.json").write_text(json.dumps(record, indent=2) + "\n")


def records(folder: Path) -> list[dict[str, Any]]:
    """Every finished run (or probe) record in ``folder``."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def costs(out: Path) -> dict[str, dict[str, float]] | None:
    path = out / "costs.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else None  # type: ignore[no-any-return]


def cost_of(
    name: str, runs: list[dict[str, Any]], measured: dict[str, dict[str, float]] | None
) -> tuple[float, float]:
    """(train s/epoch, inference ms per 128 users): the quiet measurement when there is one."""
    if measured and name in measured:
        return measured[name]["train_s_per_epoch"], measured[name]["ms_per_batch_128"]
    return (
        float(np.mean([r["train_s_per_epoch"] for r in runs])),
        float(np.mean([r["test"]["ms_per_batch_128"] for r in runs])),
    )


def table(out: Path) -> str:
    runs = records(out / "runs")
    measured = costs(out)
    lines = [
        "| model | input tokens | "
        + " | ".join(m.upper().replace("NDCG", "N") for m in METRICS)
        + " | train s/epoch | inference ms / 128 users | seeds |",
        "|---|---|" + "---|" * (len(METRICS) + 3),
    ]
    for name, _ in ROWS:
        rs = [r for r in runs if r["row"] == name]
        if not rs:
            continue
        cells = [
            f"{np.mean([r['test'][m] for r in rs]):.4f} ± {np.std([r['test'][m] for r in rs]):.4f}"
            for m in METRICS
        ]
        train_s, infer_ms = cost_of(name, rs, measured)
        lines.append(
            f"| {name} | {rs[0]['seq_len']} | "
            + " | ".join(cells)
            + f" | {train_s:.1f} | {infer_ms:.1f} | {len(rs)} |"
        )
    return "\n".join(lines)


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = records(out / "runs")
    measured = costs(out)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, spec in ROWS:
        rs = [r for r in runs if r["row"] == name]
        if not rs or {"kmeans", "use_align", "action_weight"} & set(spec):  # ablations: not a cost point
            continue
        x = cost_of(name, rs, measured)[1]
        y = np.mean([r["test"]["ndcg@10"] for r in rs])
        ax.errorbar(
            x,
            y,
            yerr=np.std([r["test"]["ndcg@10"] for r in rs]),
            fmt="o" if spec["mode"] == "cause" else "s",  # compressed history or raw events only
            color="C1" if spec["mode"] == "cause" else "C0",
        )
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("inference ms per batch of 128 users (log)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("ML-100K: quality vs inference cost")
    fig.tight_layout()
    fig.savefig(out / "ndcg_vs_cost.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rows", nargs="*", help="only these rows (exact names, as in the table)")
    parser.add_argument(
        "--table-only", action="store_true", help="rebuild docs/RESULTS.md from finished runs"
    )
    parser.add_argument(
        "--costs", action="store_true", help="measure the cost columns (run alone on the machine)"
    )
    parser.add_argument(
        "--tuning", action="store_true", help="run the V/G probes (validation split) instead of the table"
    )
    args = parser.parse_args()
    if args.costs:
        measure_costs(args.data_dir, args.out, args.rows)
        args.table_only = True
    if args.table_only:
        write_results(args.out, args.seeds)
        return
    folder = args.out / ("tuning" if args.tuning else "runs")
    folder.mkdir(parents=True, exist_ok=True)
    rows = TUNING if args.tuning else sorted(ROWS, key=lambda r: r[1]["mode"] == "hstu-full")  # slowest last
    for seed in args.seeds:
        for name, spec in rows:
            if args.rows and name not in args.rows:
                continue
            path = folder / f"{name.replace(' ', '_').replace(',', '').replace('=', '')}-s{seed}.json"
            if path.is_file():
                continue
            record = run_one(name, spec, seed, args.data_dir, args.out, args.epochs)
            if args.tuning:
                del record["test"]  # probes are judged on validation; keep the test split out of sight
            path.write_text(json.dumps(record, indent=2))
            print(f"{name} seed {seed}: valid ndcg@10 {record['valid']['ndcg@10']:.4f}", flush=True)
    write_results(args.out, args.seeds)


def tuning_table(out: Path) -> str:
    """Validation NDCG@10 of the V/G probes next to the default (V=8, G=32) on the same seeds."""
    probes = records(out / "tuning")
    if not probes:
        return "No probes run yet (`python -m model.results --data-dir ... --tuning --seeds 0`)."
    runs = records(out / "runs")
    seeds = sorted({p["seed"] for p in probes})
    base = [r for r in runs if r["row"] == "cause L=16" and r["seed"] in seeds and "valid" in r]
    lines = ["| CAUSE L=16 | valid N@10 | valid MRR | seeds |", "|---|---|---|---|"]
    for name, rs in [("V=8, G=32 (default)", base)] + [
        (n.split(", ", 1)[1], [p for p in probes if p["row"] == n]) for n, _ in TUNING
    ]:
        if rs:
            lines.append(
                f"| {name} | {np.mean([r['valid']['ndcg@10'] for r in rs]):.4f} | "
                f"{np.mean([r['valid']['mrr'] for r in rs]):.4f} | {len(rs)} |"
            )
    return "\n".join(lines)


def findings(out: Path) -> str:
    """The hand-written reading of the numbers (docs/results/findings.md), kept beside the table."""
    path = out / "findings.md"
    return path.read_text().strip() if path.is_file() else ""


def cost_note(out: Path) -> str:
    path = out / "costs.json"
    if not path.is_file():
        return "wall-clock from the sweep's own runs (not comparable if other jobs shared the machine)."
    record = json.loads(path.read_text())
    return (
        f"one epoch of each row's model measured alone on the machine (`{record['command']}`, "
        "[costs.json](results/costs.json) says when each row was measured): train seconds per epoch, and the "
        "fastest of 3 forward passes over the test users in batches of 128, PyTorch on the CPU, "
        "batches trimmed to their longest window as in training. The sweep ran two jobs at once on "
        "2 cores, so its own timings are not used."
    )


def write_results(out: Path, seeds: list[int]) -> None:
    """docs/RESULTS.md from the runs on disk, saying how many of the planned runs exist."""
    done = len(list((out / "runs").glob("*-s*.json")))
    planned = len(ROWS) * len(seeds)
    plot(out)
    status = (
        "complete"
        if done >= planned
        else f"**incomplete: {done} of {planned} runs** (rows with fewer than {len(seeds)} seeds show their "
        "count; the sweep resumes where it stopped)"
    )
    text = f"""# Quality on MovieLens-100K

Reproduce: `make results` (= `python -m model.results --data-dir ../shared/data/ml-100k --out docs/results`);
each finished run is kept in `docs/results/runs/`, so an interrupted sweep resumes. Status: {status}.

Protocol: positives are ratings >= 4 (938 users, 1,447 items, 18 genres as many-to-many categories);
leave-one-out in time order; early stopping on validation NDCG@10 (patience 5, at most 40 epochs);
the table reports the **test** split, full ranking over all items with the user's earlier items
masked; mean ± std over seeds. HSTU backbone for every row: 3 layers, d=64, 8 heads, 200 sampled
negatives; CAUSE with V=8 buckets of G=32 items; the memory compressor (Rec2PM) with C=8 memory
tokens folded from segments of S=8 history events, consistency weight 0.1. Input tokens =
1 + V + 2L (interleaved layout) or 1 + V + L (stacked, late-fusion, attn-mvp: one token per event), with C
in place of V for the memory row.
Machine: {machine()}.
Cost columns: {cost_note(out)}

{table(out)}

![NDCG@10 against inference cost](results/ndcg_vs_cost.png)

{findings(out)}

## Tuning probes (validation split only)

Reproduce: `python -m model.results --data-dir ../shared/data/ml-100k --tuning --seeds 0`; one
setting changed at a time from the default, judged by validation NDCG@10; probe records do not
keep test metrics.

{tuning_table(out)}
"""
    (out.parent / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
