"""Training: sampled windows per user, InfoNCE + action CE, early stopping on validation NDCG@10.

A run directory holds everything later steps need:
    model.pt      config + weights of the best epoch (by validation NDCG@10)
    catalog.json  external item ids, item categories, category names, action values
    run.json      how the data was loaded (so evaluate/export rebuild it) and the train config
    metrics.json  per-epoch history, best validation metrics and the test metrics
    training.png  loss and validation curves
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model import distributed
from model.cause import CauseRecommender
from model.config import ModelConfig
from model.data import Dataset
from model.evaluate import evaluate, to_tensors
from model.samples import SampleBuilder


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    num_negatives: int = 200  # K sampled negatives for InfoNCE (paper: 200)
    item_loss_weight: float = 1.0
    action_loss_weight: float = 1.0  # 0 = the "no action loss" ablation
    samples_per_user: int = 4  # windows per user per epoch: the full one + random earlier cuts
    patience: int = 5  # epochs without validation NDCG@10 improvement before stopping
    seed: int = 0
    device: str = "cpu"
    max_eval_users: int | None = None  # validation subset per epoch (None = all)
    data: dict[str, Any] = field(default_factory=dict)  # how to reload the dataset


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def item_category_table(dataset: Dataset) -> torch.Tensor:
    """(num_items + 1, M) category ids padded with C + 1; uncategorised items get bucketing.UNCATEGORIZED."""
    pad = len(dataset.categories) + 1
    rows = [c if c else (0,) for c in dataset.item_categories]
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.int64)


def build_model(dataset: Dataset, **overrides: Any) -> CauseRecommender:
    table = item_category_table(dataset)
    cfg = ModelConfig(
        num_items=dataset.num_items,
        num_actions=len(dataset.actions),
        num_categories=len(dataset.categories),
        max_item_categories=table.shape[1],
        **overrides,
    )
    return CauseRecommender(cfg, table)


def epoch_samples(dataset: Dataset, per_user: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows, ends): each user's full training window plus random earlier cuts, shuffled."""
    rows, ends = [], []
    for row in range(dataset.num_users):
        start, last = int(dataset.user_offsets[row]), dataset.train_end(row) - 1
        if last <= start:
            continue
        cuts = [last] + list(rng.integers(start + 1, last + 1, per_user - 1))
        rows += [row] * len(cuts)
        ends += cuts
    order = rng.permutation(len(rows))
    return np.asarray(rows)[order], np.asarray(ends)[order]


def length_grouped(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 32
) -> list[np.ndarray]:
    """Batches of sample indices with similar window lengths, in random order: samples are sorted
    by length within pools of ``pool`` batches (the order inside a pool stays random), so trimmed
    batches of short windows cost little and every epoch still mixes users."""
    batches = []
    size = batch_size * pool
    for lo in range(0, len(lengths), size):
        idx = np.arange(lo, min(lo + size, len(lengths)))
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches += [idx[b : b + batch_size] for b in range(0, len(idx), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_batch_size(cfg: ModelConfig, requested: int, budget_bytes: float = 2.5e9) -> int:
    """Cap the batch so the saved attention activations of all layers fit the memory budget."""
    per_user = 6 * cfg.num_layers * cfg.num_heads * cfg.seq_len**2 * 4
    return int(max(4, min(requested, budget_bytes // per_user)))


def save_catalog(dataset: Dataset, run_dir: Path) -> None:
    catalog = {
        "items": dataset.items.to_list(),
        "item_categories": [list(c) for c in dataset.item_categories[1:]],
        "categories": dataset.categories.to_list(),
        "actions": dataset.actions.to_list(),
    }
    (run_dir / "catalog.json").write_text(json.dumps(catalog))


def train(
    dataset: Dataset, model_cfg: dict[str, Any], cfg: TrainConfig, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Train and keep the best epoch. Under torchrun every rank trains on its slice of each batch;
    rank 0 writes the run directory and returns the result, the other ranks return {}."""
    ctx = distributed.init(cfg.device)
    try:
        return _train(dataset, model_cfg, cfg, run_dir, progress and ctx.is_main, ctx)
    finally:
        distributed.shutdown(ctx)


def _train(
    dataset: Dataset,
    model_cfg: dict[str, Any],
    cfg: TrainConfig,
    run_dir: Path,
    progress: bool,
    ctx: distributed.Context,
) -> dict[str, Any]:
    seed_everything(cfg.seed)  # the same on every rank: the same batches, negatives and init
    model = build_model(dataset, **model_cfg).to(ctx.device)
    step_model: torch.nn.Module = model
    if ctx.active:
        step_model = DistributedDataParallel(
            model, find_unused_parameters=True
        )  # ablations leave some unused
    builder = SampleBuilder(dataset, model.cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    batch_size = train_batch_size(model.cfg, cfg.batch_size)
    valid, test = dataset.split("valid"), dataset.split("test")
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"ndcg@10": -1.0}
    stale = 0
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_catalog(dataset, run_dir)
        (run_dir / "run.json").write_text(
            json.dumps(
                {
                    "train": asdict(cfg),
                    "model": model.cfg.to_dict(),
                    "dataset": dataset.describe(),
                    "world_size": ctx.world,
                },
                indent=2,
            )
        )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        rows, ends = epoch_samples(dataset, cfg.samples_per_user, rng)
        started = time.perf_counter()
        totals = np.zeros(2)
        # A global batch smaller than the world would leave a rank idle: every rank skips it.
        steps = [
            b
            for b in length_grouped(builder.cost_lengths(rows, ends), batch_size, rng)
            if len(b) >= ctx.world
        ]
        bar = tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=not progress)
        for idx in bar:
            mine = idx[ctx.rank :: ctx.world]
            batch = to_tensors(builder.batch(rows[mine], ends[mine], True, trim=True), ctx.device)
            local = [(batch["target_next"] > 0).sum(), batch["mask"].sum()]
            n_items, n_actions = ctx.global_counts(*local)
            item_loss, action_loss, consistency = step_model(batch, cfg.num_negatives)
            # Each rank's mean weighted by its share of the global terms: DDP's average of these
            # gradients is the gradient of the global-batch mean (exactly the single-process loss).
            scale_i = float(local[0]) * ctx.world / max(n_items, 1.0)
            scale_a = float(local[1]) * ctx.world / max(n_actions, 1.0)
            loss = cfg.item_loss_weight * scale_i * item_loss + cfg.action_loss_weight * scale_a * action_loss
            loss = loss + model.cfg.memory_weight * consistency
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            totals += [item_loss.item(), action_loss.item()]
            bar.set_postfix(item=f"{item_loss.item():.3f}", action=f"{action_loss.item():.3f}")
        epoch_s = time.perf_counter() - started
        # Every rank holds the same weights, so every rank reaches the same early-stopping decision.
        metrics = evaluate(model, builder, valid, max_users=cfg.max_eval_users, device=ctx.device)
        record = {
            "epoch": epoch,
            "item_loss": totals[0] / len(steps),
            "action_loss": totals[1] / len(steps),
            "train_s": epoch_s,
            "valid": metrics,
        }
        history.append(record)
        if progress:
            tqdm.write(
                f"epoch {epoch}: item loss {record['item_loss']:.4f} action loss "
                f"{record['action_loss']:.4f} valid ndcg@10 {metrics['ndcg@10']:.4f} ({epoch_s:.1f}s)"
            )
        if float(metrics["ndcg@10"]) > best["ndcg@10"]:
            best, stale = {**metrics, "epoch": epoch}, 0
            if ctx.is_main:
                torch.save(
                    {"config": model.cfg.to_dict(), "state_dict": model.state_dict()}, run_dir / "model.pt"
                )
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    ctx.barrier()
    if not ctx.is_main:
        return {}
    model = load_model(run_dir, ctx.device)
    result = {
        "best_valid": best,
        "test": evaluate(model, builder, test, device=ctx.device),
        "train_s_per_epoch": float(np.mean([h["train_s"] for h in history])),
        "epochs_run": len(history),
        "seq_len": model.cfg.seq_len,
        "world_size": ctx.world,
        "history": history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    plot_curves(history, run_dir / "training.png")
    return result


def load_model(run_dir: Path, device: str = "cpu") -> CauseRecommender:
    ckpt = torch.load(run_dir / "model.pt", map_location=device, weights_only=True)
    cfg = ModelConfig(**ckpt["config"])
    model = CauseRecommender(cfg, ckpt["state_dict"]["item_cats"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["item_loss"] for h in history], label="next-item InfoNCE")
    ax1.plot(epochs, [h["action_loss"] for h in history], label="action CE")
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss")
    ax1.legend()
    ax2.plot(epochs, [h["valid"]["ndcg@10"] for h in history], marker="o")
    ax2.set_xlabel("epoch")
    ax2.set_title("validation NDCG@10")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
