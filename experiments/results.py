"""The quality table (docs/RESULTS.md): popularity, SASRec, HSTU, HSTU-full and CAUSE on a MovieLens
release, in two views, 3 seeds, every learned row trained with `causerec train`'s defaults.

    python -m experiments.results --dataset ml-100k --data-dir ../shared/data/ml-100k --jobs 2

Views: ``positives`` keeps ratings >= 4 (the rating is the action); ``all-ratings`` keeps every
rating as an event, as the official CAUSE code does. Each finished run lands in
OUT/<dataset>/<view>/runs/<row>-s<seed>.json, so an interrupted sweep resumes where it stopped and
the tables are rebuilt from whatever runs exist. Early stopping uses the validation split only; the
tables report the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VIEWS = {"positives": 4.0, "all-ratings": 0.0}  # view -> min_rating
EVAL_WINDOWS = (8, 16, 32, 64)
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Row:
    name: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides; {} = popularity
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides (ablations only)
    views: tuple[str, ...] = tuple(VIEWS)
    seeds: tuple[int, ...] = SEEDS
    kmeans: int = 0  # categories from K-Means over a trained model's item embeddings

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name).strip("_")


SASREC = {"mode": "hstu", "backbone": "transformer", "token_layout": "items"}
NO_ACTION_LOSS = {"action_loss_weight": 0.0}
ONE = (0,)  # variants and ablations: one seed, positives only
ROWS = [
    Row("popularity", seeds=ONE),
    *(Row(f"SASRec L={n}", {**SASREC, "recent_len": n}, NO_ACTION_LOSS) for n in (16, 50, 64)),
    Row("HSTU L=16", {"mode": "hstu", "recent_len": 16}),
    Row("HSTU L=64", {"mode": "hstu", "recent_len": 64}),
    Row("HSTU L=200", {"mode": "hstu", "recent_len": 200}, views=("all-ratings",)),
    Row("HSTU-full (cap 256)", {"mode": "hstu-full", "recent_len": 256}),
    Row("CAUSE L=16", {"mode": "cause", "recent_len": 16}),
]
CAUSE16 = {"mode": "cause", "recent_len": 16}
# CAUSE's rate before validation chose 3e-3 for it (model.config.peak_lr): the ablations that ran then
# keep it, so each stays the run it reports; compare them with "CAUSE L=16, lr 1e-3".
CAUSE_LR_BEFORE = {"lr": 1e-3}


def variant(name: str, model: dict[str, Any], train: dict[str, Any] | None = None, kmeans: int = 0) -> Row:
    """A variant or ablation: one seed, on the positives."""
    return Row(name, model, train or {}, views=("positives",), seeds=ONE, kmeans=kmeans)


def changed(
    name: str,
    label: str,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    views: tuple[str, ...] = tuple(VIEWS),
    seeds: tuple[int, ...] = SEEDS,
) -> Row:
    """The main row ``name`` with its model and train flags overridden, named "<name>, <label>"."""
    row = next(r for r in ROWS if r.name == name)
    return Row(
        f"{name}, {label}", {**row.model, **(model or {})}, {**row.train, **(train or {})}, views, seeds
    )


def no_user_token(
    name: str, views: tuple[str, ...], seeds: tuple[int, ...], train: dict[str, Any] | None = None
) -> Row:
    """The main row ``name`` with one user token shared by every user (--user-hash-buckets 1)."""
    return changed(name, "no user token", {"user_hash_buckets": 1}, train, views=views, seeds=seeds)


VARIANTS = [
    Row("CAUSE L=64", {"mode": "cause", "recent_len": 64}, views=("all-ratings",), seeds=ONE),
    variant("CAUSE L=8", {"mode": "cause", "recent_len": 8}),
    variant("CAUSE L=32", {"mode": "cause", "recent_len": 32}),
    variant("CAUSE L=16, V=4", {**CAUSE16, "num_buckets": 4}, CAUSE_LR_BEFORE),
    variant("CAUSE L=16, no W_align", {**CAUSE16, "use_align": False}, CAUSE_LR_BEFORE),
    variant("CAUSE L=16, no action loss", CAUSE16, NO_ACTION_LOSS),
    variant("CAUSE L=16, K-Means categories", CAUSE16, kmeans=18),
    *(
        variant(f"CAUSE L=16, {t} tokens", {**CAUSE16, "token_layout": t})
        for t in ("stacked", "late-fusion", "attn-mvp")
    ),
    variant("L=16, memory compressor (Rec2PM)", {**CAUSE16, "compressor": "memory"}),
    variant("HSTU L=16, 200 sampled negatives", {"mode": "hstu", "recent_len": 16}, {"num_negatives": 200}),
    variant("HSTU L=16, absolute positions", {"mode": "hstu", "recent_len": 16, "positions": True}),
    # Where HSTU's test deficit against SASRec comes from (findings.md): the same SiLU backbone
    # without the interleaved action tokens, and the interleaved tokens through softmax attention.
    variant(
        "HSTU L=16, item tokens only",
        {"mode": "hstu", "recent_len": 16, "token_layout": "items", "positions": True},
        NO_ACTION_LOSS,
    ),
    variant(
        "HSTU L=16 tokens, softmax attention", {"mode": "hstu", "recent_len": 16, "backbone": "transformer"}
    ),
    # The interleaved tokens under SiLU attention without the action loss: the loss, not the tokens?
    variant("HSTU L=16, no action loss", {"mode": "hstu", "recent_len": 16}, NO_ACTION_LOSS),
    # Against the default hashed per-user embedding, whose 2,048 rows give each ML-100K user a row of
    # its own, fitted to that user's training targets (findings.md).
    no_user_token("SASRec L=16", tuple(VIEWS), SEEDS),
    no_user_token("HSTU L=16", tuple(VIEWS), SEEDS),
    no_user_token("CAUSE L=16", tuple(VIEWS), SEEDS, CAUSE_LR_BEFORE),
    no_user_token("HSTU L=64", ("positives",), ONE),
    # The step budget (findings.md): SASRec peaks early, HSTU and CAUSE near the end of the 1,300
    # steps; a quarter of the targets per step gives each run 4x the steps over the same epochs.
    *(
        changed(n, "512 targets per step", train={"batch_targets": 512}, seeds=ONE)
        for n in ("SASRec L=16", "HSTU L=16")
    ),
    # One token per event (item_t + action_{t-1}, model/layouts.py) instead of the interleaved pair:
    # the state that predicts the next item then holds the newest item itself, as SASRec's does.
    changed("HSTU L=16", "stacked tokens", {"token_layout": "stacked"}),
]
# The recipe's learning rate and regularisation, probed on ml-latest-small (its findings.md): SASRec
# peaks early, HSTU and CAUSE near the end of the step budget.
MAIN = ("SASRec L=16", "HSTU L=16", "HSTU L=64", "CAUSE L=16")
VARIANTS += [changed(n, "dropout 0.5", {"dropout": 0.5}, seeds=ONE) for n in MAIN[:2]]
# 3e-3 raised validation in 7 of 8 HSTU-family cells on one seed, so HSTU got three seeds; CAUSE's
# main row is now trained at 3e-3 (model.config.peak_lr) and its former rate is the variant.
VARIANTS += [
    changed(n, "lr 3e-3", train={"lr": 3e-3}, seeds=ONE if n.startswith("SASRec") else SEEDS)
    for n in MAIN[:3]
]
VARIANTS += [changed("CAUSE L=16", "lr 1e-3", train=CAUSE_LR_BEFORE)]
# Adam moves a bias entry by at most ~lr per step: the relative position / time tables of HSTU L=16
# end with entries of at most 0.32 (probe-bias.json). Ten times their rate, the rest unchanged.
VARIANTS += [changed(n, "bias lr x10", train={"bias_lr_scale": 10.0}, seeds=ONE) for n in MAIN[1:]]
ALL_ROWS = {r.name: r for r in ROWS + VARIANTS}


def load(dataset: str, data_dir: Path, view: str, categories_csv: Path | None = None):  # type: ignore[no-untyped-def]
    from model.data import load_dataset

    return load_dataset(dataset, data_dir, categories_csv=categories_csv, min_rating=VIEWS[view])


def run_one(
    row: Row, view: str, seed: int, dataset: str, data_dir: Path, folder: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Train one row on one view with one seed (or score popularity); the record to store."""
    import torch

    torch.set_num_threads(1)  # one run per core: the sweep runs --jobs of them side by side
    started = time.perf_counter()
    if not row.model:
        from model.baselines import popularity

        data = load(dataset, data_dir, view)
        return _record(
            row,
            view,
            seed,
            started,
            test=popularity(data, data.split("test")),
            valid=popularity(data, data.split("valid")),
        )
    from model.config import TrainConfig
    from model.evaluate import evaluate, with_window
    from model.samples import SampleBuilder
    from model.train import load_model, train

    categories = kmeans_categories(dataset, data_dir, view, folder, seed, row.kmeans) if row.kmeans else None
    data = load(dataset, data_dir, view, categories)
    cfg = TrainConfig(**{**row.train, "seed": seed, "device": device})
    with tempfile.TemporaryDirectory() as tmp:
        result = train(data, row.model, cfg, Path(tmp) / "run", progress=False)
        model = load_model(Path(tmp) / "run", device)
    test = data.split("test")
    at_window = {}
    for n in EVAL_WINDOWS:
        windowed = with_window(model, n)
        builder = SampleBuilder(data, windowed.cfg)
        at_window[str(n)] = float(evaluate(windowed, builder, test, device=device)["ndcg@10"])
    return _record(
        row,
        view,
        seed,
        started,
        machine=where(device),
        test=result["test"],
        valid=result["best_valid"],
        seq_len=result["seq_len"],
        steps=result["steps_run"],
        epochs=result["epochs_run"],
        train_s_per_epoch=result["train_s_per_epoch"],
        curve=[[h["step"], round(h["valid"]["ndcg@10"], 5)] for h in result["history"]],
        test_at_window=at_window,
    )


def where(device: str) -> str:
    """The machine a run trained on, with the GPU's name when it trained on one."""
    from causerec.machine import gpu, machine

    return machine() + (f", {gpu()}" if device.startswith("cuda") else "")


def _record(row: Row, view: str, seed: int, started: float, **values: Any) -> dict[str, Any]:
    return {
        "row": row.name,
        "view": view,
        "seed": seed,
        "wall_s": round(time.perf_counter() - started, 1),
        **values,
    }


def kmeans_categories(dataset: str, data_dir: Path, view: str, folder: Path, seed: int, k: int) -> Path:
    """items.csv with K-Means clusters of the item embeddings of an `HSTU L=16` model (same seed)."""
    from sklearn.cluster import KMeans

    from model.config import TrainConfig
    from model.train import load_model, train

    path = folder / f"kmeans{k}-s{seed}.csv"
    if path.is_file():
        return path
    data = load(dataset, data_dir, view)
    with tempfile.TemporaryDirectory() as tmp:
        train(
            data, {"mode": "hstu", "recent_len": 16}, TrainConfig(seed=seed), Path(tmp) / "r", progress=False
        )
        weights = load_model(Path(tmp) / "r").item_emb.weight.detach().numpy()[1:]
    weights = weights / np.linalg.norm(weights, axis=1, keepdims=True).clip(1e-9)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(weights)
    lines = ["item_id,categories"] + [f"{data.items.external(i + 1)},k{c}" for i, c in enumerate(labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- the sweep ------------------------------------------------------------------------------------
def plan(rows: list[Row], views: list[str], seeds: list[int]) -> list[tuple[Row, str, int]]:
    """Every (row, view, seed) to run, in the order that gives a readable table soonest: seed by
    seed, the cheap rows first, the raw-history rows (the slowest by far) last within a seed."""
    slow = {"HSTU-full (cap 256)", "HSTU L=200"}
    order = []
    for seed in seeds:
        for row in sorted(rows, key=lambda r: r.name in slow):
            order += [(row, v, seed) for v in views if v in row.views and seed in row.seeds]
    return order


def run_path(out: Path, view: str, row: Row, seed: int) -> Path:
    return out / view / "runs" / f"{row.slug}-s{seed}.json"


def _run_and_save(
    row: Row, view: str, seed: int, dataset: str, data_dir: Path, out: Path, device: str
) -> str:
    path = run_path(out, view, row, seed)
    record = run_one(row, view, seed, dataset, data_dir, out / view, device)
    path.write_text(json.dumps(record, indent=2) + "\n")
    ndcg = record["test"]["ndcg@10"]
    return f"{row.name} [{view}] seed {seed}: test ndcg@10 {ndcg:.4f} ({record['wall_s']:.0f}s)"


def sweep(args: argparse.Namespace) -> None:
    out = args.out / args.dataset
    rows = [ALL_ROWS[n] for n in args.rows] if args.rows else ROWS + (VARIANTS if args.variants else [])
    todo = [
        (r, v, s) for r, v, s in plan(rows, args.views, args.seeds) if not run_path(out, v, r, s).is_file()
    ]
    for view in args.views:
        (out / view / "runs").mkdir(parents=True, exist_ok=True)
    print(f"{len(todo)} runs to do", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(_run_and_save, r, v, s, args.dataset, args.data_dir, out, args.device)
            for r, v, s in todo
        ]
        for done in as_completed(futures):
            print(done.result(), flush=True)
            write_results(args.out, args.dataset)


# ---- the tables -----------------------------------------------------------------------------------
def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def quality_table(runs: list[dict[str, Any]], rows: list[Row]) -> str:
    pop = [r["test"]["ndcg@10"] for r in runs if r["row"] == "popularity"]
    lines = [
        "| model | input tokens | N@10 | N@20 | MRR | x popularity | valid N@10 | steps (best) "
        "| train s/epoch | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rs = [r for r in runs if r["row"] == row.name]
        if not rs:
            continue
        n10 = [r["test"]["ndcg@10"] for r in rs]
        ratio = f"{np.mean(n10) / pop[0]:.2f}" if pop else ""
        learned = "steps" in rs[0]
        steps = (
            f"{np.mean([r['steps'] for r in rs]):.0f} ({np.mean([r['valid']['step'] for r in rs]):.0f})"
            if learned
            else ""
        )
        # null in a run that was paused while it trained (its mean would include the pause)
        timed = [r["train_s_per_epoch"] for r in rs if r.get("train_s_per_epoch") is not None]
        cost = f"{np.mean(timed):.1f}" if timed else "-" if learned else ""
        n20, mrr = [r["test"]["ndcg@20"] for r in rs], [r["test"]["mrr"] for r in rs]
        # The best epoch's validation score, which chose the checkpoint: beside the test score it
        # shows where a row's validation edge does not carry over (findings.md).
        valid = _mean_std([r["valid"]["ndcg@10"] for r in rs])
        lines.append(
            f"| {row.name} | {rs[0].get('seq_len', '')} | {_mean_std(n10)} | {_mean_std(n20)} | "
            f"{_mean_std(mrr)} | {ratio} | {valid} | {steps} | {cost} | {len(rs)} |"
        )
    return "\n".join(lines)


def selection_check(runs: list[dict[str, Any]], rows: list[Row]) -> str:
    """Does validation rank the learned rows as test does? Every recipe choice is made on validation
    (docs/TRAINING.md), so a view whose validation does not order its rows like its test split cannot
    choose between them: the rank correlation over rows says how far to trust such a choice."""
    means = []
    for row in rows:
        rs = [r for r in runs if r["row"] == row.name]
        if row.model and rs:
            means.append(
                (
                    row.name,
                    np.mean([r["valid"]["ndcg@10"] for r in rs]),
                    np.mean([r["test"]["ndcg@10"] for r in rs]),
                )
            )
    if len(means) < 3:
        return ""
    names, valid, test = zip(*means, strict=True)
    # Spearman's rho without ties (means of floats): the Pearson correlation of the ranks.
    rho = float(np.corrcoef(np.argsort(np.argsort(valid)), np.argsort(np.argsort(test)))[0, 1])
    pick = int(np.argmax(valid))
    test_rank = 1 + int(np.sum(np.asarray(test) > test[pick]))
    return (
        f"Validation as a selector: over the {len(means)} learned rows and variants of this view, the "
        f"rank correlation (Spearman) of mean validation and mean test NDCG@10 is {rho:.2f}; the row "
        f"validation ranks first, {names[pick]}, is number {test_rank} of {len(means)} on test."
    )


def window_table(runs: list[dict[str, Any]], rows: list[Row]) -> str:
    lines = [
        "| model (trained with) | " + " | ".join(f"served with {n} events" for n in EVAL_WINDOWS) + " |",
        "|---|" + "---|" * len(EVAL_WINDOWS),
    ]
    for row in rows:
        rs = [r for r in runs if r["row"] == row.name and "test_at_window" in r]
        if rs:
            cells = [_mean_std([r["test_at_window"][str(n)] for r in rs]) for n in EVAL_WINDOWS]
            lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: list[dict[str, Any]], rows: list[Row], path: Path, title: str) -> None:
    """Validation NDCG@10 against optimiser steps, one line per run (seeds of a row share a colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    pop = [r["valid"]["ndcg@10"] for r in runs if r["row"] == "popularity"]
    if pop:
        ax.axhline(pop[0], color="grey", linestyle="--", label="popularity")
    for i, row in enumerate(r for r in rows if r.model):
        for j, run in enumerate(r for r in runs if r["row"] == row.name):
            steps, values = zip(*run["curve"], strict=True)
            ax.plot(steps, values, color=f"C{i}", alpha=0.8, linewidth=1, label=row.name if j == 0 else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe(runs: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in runs})
    return f"{len(runs)} runs, seeds {seeds}"


def machines(runs: list[dict[str, Any]]) -> str:
    """Where the runs trained (each run records it), with how many ran on each machine."""
    counts = Counter(r.get("machine", "not recorded") for r in runs)
    return "; ".join(f"{m} ({n} runs)" for m, n in counts.most_common())


def write_results(out: Path, dataset: str) -> None:
    """docs/RESULTS.md (for ml-100k, the dataset of the committed table) or OUT/<dataset>/RESULTS.md."""
    folder = out / dataset
    every_run = []
    target = out.parent / "RESULTS.md" if dataset == "ml-100k" else folder / "RESULTS.md"
    sections = []
    for view in VIEWS:
        runs = records(folder / view / "runs")
        if not runs:
            continue
        every_run += runs
        rows = [r for r in ROWS if view in r.views]
        variants = [r for r in VARIANTS if view in r.views]
        plot_curves(runs, rows, folder / view / "curves.png", f"{dataset}, {view}: validation NDCG@10")
        curves = os.path.relpath(folder / view / "curves.png", target.parent)
        text = f"""## {dataset}, {view} ({describe(runs)})

{quality_table(runs, rows)}

Test NDCG@10 of the same trained models when they are served with a shorter or longer recent
window (events beyond it go to the history tokens for CAUSE, and are dropped otherwise):

{window_table(runs, rows)}

![validation curves]({curves})
"""
        if any(r["row"] in {v.name for v in variants} for r in runs):
            table = quality_table(runs, variants)
            text += (
                "\nVariants and ablations (one seed unless the seeds column says more; compare with the "
                f"seed-0 runs above):\n\n{table}\n"
            )
        check = selection_check(runs, rows + variants)
        if check:
            text += f"\n{check}\n"
        sections.append(text)
    findings = folder / "findings.md"
    command = f"`python -m experiments.results --dataset {dataset} --data-dir DIR --jobs 2`"
    reproduce = f"`make results` (= {command})" if dataset == "ml-100k" else command
    target.write_text(
        f"""# Quality on MovieLens ({dataset})

Reproduce: {reproduce};
every finished run is kept under `{folder}/<view>/runs/`, so an interrupted sweep resumes.

Protocol: users with at least 5 events, leave-one-out in time order (the last event is the test
target, the one before it the validation target), full ranking over every item with the user's
earlier items masked, mean ± std over seeds. Popularity counts training events only. Every learned
row is `causerec train` with its defaults (the recipe: docs/TRAINING.md) and only the row's own
flags: HSTU backbone with 3 layers, d=64, 8 heads; SASRec is the same trainer with a softmax
transformer over item tokens only (`--backbone transformer --token-layout items`, no action loss);
CAUSE with V=8 buckets of G=32 items (the paper's defaults). "steps (best)": optimiser steps run,
and the step of the best validation epoch. Train s/epoch: two runs shared the machine's 2 cores,
one thread each.
Machines: {machines(every_run)}.

{chr(10).join(sections)}
{findings.read_text().strip() if findings.is_file() else ""}
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k", help="ml-100k | ml-1m | ml-20m | ml-latest")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rows", nargs="*", help="only these rows (exact names)")
    parser.add_argument("--variants", action="store_true", help="also the one-seed variants and ablations")
    parser.add_argument("--jobs", type=int, default=max(1, len(os.sched_getaffinity(0))))
    parser.add_argument("--device", default="cpu", help="cpu | cuda (the runs record the machine)")
    parser.add_argument("--table-only", action="store_true", help="rebuild the tables from finished runs")
    args = parser.parse_args()
    if not args.table_only:
        sweep(args)
    write_results(args.out, args.dataset)


if __name__ == "__main__":
    main()
