"""Training: windows tiling every user's events (model.batches), next-item softmax + action CE,
AdamW with warm-up and cosine decay, early stopping on a smoothed validation NDCG@10.

A run directory holds everything later steps need:
    model.pt      config + weights of the best epoch (by validation NDCG@10)
    catalog.json  external item ids, item categories, category names, action values
    run.json      how the data was loaded (so evaluate/export rebuild it) and the train config
    metrics.json  per-epoch history, best validation metrics and the test metrics
    training.png  loss and validation curves
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model import distributed
from model.batches import Windows, chunks, length_grouped, tile
from model.cause import CauseRecommender
from model.config import ModelConfig, TrainConfig, peak_lr
from model.data import Dataset
from model.evaluate import evaluate, to_tensors
from model.hstu import bias_tables
from model.samples import SampleBuilder


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


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from lr to min_lr_ratio * lr at ``total``."""
    assert cfg.lr is not None, "resolve the mode's rate first (model.config.peak_lr)"
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, bias_lr_scale: float) -> list[dict[str, Any]]:
    """The relative-bias tables (every HSTU layer's ``rab``) in a group of their own, whose rate is
    ``bias_lr_scale`` times the schedule's; everything else at the schedule's rate."""
    bias = bias_tables(model)
    scaled = {id(p) for p in bias}
    rest = [p for p in model.parameters() if id(p) not in scaled]
    groups = [{"params": rest, "lr_scale": 1.0}]
    return groups + ([{"params": bias, "lr_scale": bias_lr_scale}] if bias else [])


class Stopper:
    """Keeps the best epoch by raw validation NDCG@10 and stops once the moving average of the last
    ``smoothing`` epochs has not improved for ``patience`` epochs."""

    def __init__(self, patience: int, smoothing: int) -> None:
        self.patience, self.smoothing = patience, smoothing
        self.curve: list[float] = []
        self.best_smooth, self.stale = -1.0, 0

    def update(self, value: float) -> bool:
        """Record one epoch's value; True when training should stop."""
        self.curve.append(value)
        smooth = float(np.mean(self.curve[-self.smoothing :]))
        if smooth > self.best_smooth:
            self.best_smooth, self.stale = smooth, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


def save_catalog(dataset: Dataset, run_dir: Path) -> None:
    titles = dataset.extras.get("titles", {})
    assert isinstance(titles, dict)
    catalog = {
        "items": dataset.items.to_list(),
        "item_categories": [list(c) for c in dataset.item_categories[1:]],
        "categories": dataset.categories.to_list(),
        "actions": dataset.actions.to_list(),
        "titles": [titles.get(i, "") for i in dataset.items.to_list()] if titles else [],
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


def _write_run(
    run_dir: Path, dataset: Dataset, cfg: TrainConfig, model: CauseRecommender, world: int
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_catalog(dataset, run_dir)
    record = {
        "train": asdict(cfg),
        "model": model.cfg.to_dict(),
        "dataset": dataset.describe(),
        "world_size": world,
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))


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
    cfg = replace(cfg, lr=peak_lr(cfg, model.cfg))  # run.json records the rate the run used
    step_model: torch.nn.Module = model
    if ctx.active:
        step_model = DistributedDataParallel(
            model, find_unused_parameters=True
        )  # ablations leave some unused
    builder = SampleBuilder(dataset, model.cfg)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.bias_lr_scale), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    rng = np.random.default_rng(cfg.seed)
    valid, test = dataset.split("valid"), dataset.split("test")
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"ndcg@10": -1.0}
    stopper = Stopper(cfg.patience, cfg.smoothing)
    if ctx.is_main:
        _write_run(run_dir, dataset, cfg, model, ctx.world)
    step, total_steps = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        windows = tile(dataset, model.cfg.recent_len, rng)
        builder.prepare(windows.rows, windows.ends)
        # A global batch smaller than the world would leave a rank idle: every rank skips it.
        lengths = builder.cost_lengths(windows.rows, windows.ends)
        groups = length_grouped(lengths, windows.targets, cfg.batch_targets, rng)
        steps = [b for b in groups if len(b) >= ctx.world]
        total_steps = total_steps or len(steps) * cfg.epochs  # the schedule's length, fixed at epoch 1
        started = time.perf_counter()
        totals = np.zeros(2)
        bar = tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=not progress)
        for idx in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg) * group["lr_scale"]
            optimizer.zero_grad(set_to_none=True)
            losses = _accumulate(step_model, model, builder, windows, idx, cfg, ctx)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            totals += losses
            bar.set_postfix(item=f"{losses[0]:.3f}", action=f"{losses[1]:.3f}")
        epoch_s = time.perf_counter() - started
        # Every rank holds the same weights, so every rank reaches the same early-stopping decision.
        metrics = evaluate(model, builder, valid, max_users=cfg.max_eval_users, device=ctx.device)
        record = {
            "epoch": epoch,
            "step": step,
            "lr": lr_at(step - 1, total_steps, cfg),
            "item_loss": totals[0] / len(steps),
            "action_loss": totals[1] / len(steps),
            "train_s": epoch_s,
            "valid": metrics,
        }
        history.append(record)
        if progress:
            tqdm.write(
                f"epoch {epoch} (step {step}): item loss {record['item_loss']:.4f} action loss "
                f"{record['action_loss']:.4f} valid ndcg@10 {metrics['ndcg@10']:.4f} ({epoch_s:.1f}s)"
            )
        if float(metrics["ndcg@10"]) > best["ndcg@10"]:
            best = {**metrics, "epoch": epoch, "step": step}
            if ctx.is_main:
                torch.save(
                    {"config": model.cfg.to_dict(), "state_dict": model.state_dict()}, run_dir / "model.pt"
                )
        if stopper.update(float(metrics["ndcg@10"])):
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
        "steps_run": step,
        "seq_len": model.cfg.seq_len,
        "world_size": ctx.world,
        "history": history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    plot_curves(history, run_dir / "training.png")
    return result


def _accumulate(
    step_model: torch.nn.Module,
    model: CauseRecommender,
    builder: SampleBuilder,
    windows: Windows,
    idx: np.ndarray,
    cfg: TrainConfig,
    ctx: distributed.Context,
) -> list[float]:
    """Forward and backward one global batch (this rank's slice, in memory-sized chunks); returns
    the per-target item and action losses of this rank's slice."""
    mine = idx[ctx.rank :: ctx.world]
    arrays = builder.batch(
        windows.rows[mine], windows.ends[mine], True, trim=True, target_from=windows.target_from[mine]
    )
    tokens = model.cfg.seq_len - model.cfg.tokens_per_event * (model.cfg.recent_len - arrays["mask"].shape[1])
    width = model.cfg.num_items + 1 if cfg.num_negatives is None else cfg.num_negatives + 1
    parts = chunks(
        len(mine),
        tokens,
        arrays["mask"].shape[1],
        model.cfg.num_layers,
        model.cfg.num_heads,
        width,
        cfg.memory_budget_bytes,
    )
    sums, counts = np.zeros(2), np.zeros(2)
    for i, part in enumerate(parts):
        batch = to_tensors({k: v[part] for k, v in arrays.items()}, ctx.device)
        # Gradients of every chunk but the last accumulate locally; the last one's backward syncs.
        deferred = ctx.active and i < len(parts) - 1
        with step_model.no_sync() if deferred else contextlib.nullcontext():  # type: ignore[operator]
            item_loss, action_loss, consistency = step_model(batch, cfg.num_negatives)
            # Every target weighs the same: a sum over targets divided by a constant, not a mean per
            # batch (a batch of short windows would then weigh its few targets more). DDP averages
            # gradients over ranks; the world-size factor makes that the global batch's sum.
            scale = ctx.world / cfg.batch_targets
            loss = scale * (cfg.item_loss_weight * item_loss + cfg.action_loss_weight * action_loss)
            share = (part.stop - part.start) / len(mine)  # consistency is a mean over the chunk
            loss = loss + model.cfg.memory_weight * share * consistency
            loss.backward()
        sums += [item_loss.item(), action_loss.item()]
        counts += [float((batch["target_next"] > 0).sum()), float(batch["action_target"].sum())]
    return list(sums / np.maximum(counts, 1))


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

    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(steps, [h["item_loss"] for h in history], label="next-item loss")
    ax1.plot(steps, [h["action_loss"] for h in history], label="action CE")
    ax1.set_xlabel("optimiser step")
    ax1.set_title("training loss per target")
    ax1.legend()
    ax2.plot(steps, [h["valid"]["ndcg@10"] for h in history], marker=".")
    ax2.set_xlabel("optimiser step")
    ax2.set_title("validation NDCG@10")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
