"""Full-ranking evaluation: every item is scored for every user; NDCG@k, MRR, HR@10.

The held-out item competes against the whole catalogue. Items the user already interacted with
are masked out, unless the dataset has repeat consumption (then a seen item is a fair answer and
masking it would hide the target). The rank is 1 + the number of items scored strictly higher.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from model.cause import CauseRecommender, model_inputs
from model.config import ModelConfig
from model.data import Split
from model.samples import SampleBuilder

KS = (1, 10, 20, 100, 200)


def to_tensors(batch: dict[str, np.ndarray], device: str | torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def eval_batch_size(seq_len: int, heads: int, budget_bytes: float = 1.5e9) -> int:
    """Users per forward pass so that one (B, H, T, T) attention tensor fits the budget."""
    return int(max(8, min(128, budget_bytes // (heads * seq_len * seq_len * 4))))


def ranking_metrics(rank: np.ndarray) -> dict[str, float | int | str]:
    """NDCG@k, MRR and HR@10 from the 1-based rank of each user's held-out item."""
    out: dict[str, float | int | str] = {
        f"ndcg@{k}": float(np.mean(np.where(rank <= k, 1 / np.log2(rank + 1), 0))) for k in KS
    }
    out["mrr"] = float(np.mean(1 / rank))
    out["hr@10"] = float(np.mean(rank <= 10))
    out["users"] = len(rank)
    return out


@torch.no_grad()
def evaluate(
    model: CauseRecommender,
    builder: SampleBuilder,
    split: Split,
    batch_size: int | None = None,
    max_users: int | None = None,
    device: str = "cpu",
) -> dict[str, float | int | str]:
    model.eval()
    cfg = model.cfg
    batch_size = batch_size or eval_batch_size(cfg.seq_len, cfg.num_heads)
    mask_seen = not builder.dataset.has_repeats
    rows, ends, targets = split.users, split.input_end, builder.dataset.item[split.target]
    if max_users is not None:
        rows, ends, targets = rows[:max_users], ends[:max_users], targets[:max_users]
    order = np.argsort(builder.cost_lengths(rows, ends), kind="stable")  # short with short
    rows, ends, targets = rows[order], ends[order], targets[order]
    ranks = []
    forward_s, forward_users = 0.0, 0
    for lo in range(0, len(rows), batch_size):
        r, e = rows[lo : lo + batch_size], ends[lo : lo + batch_size]
        batch = to_tensors(builder.batch(r, e, with_targets=False, trim=True), device)
        started = time.perf_counter()
        scores = model.score_all(**model_inputs(model, batch))
        forward_s += time.perf_counter() - started
        forward_users += len(r)
        if mask_seen:
            for i, (row, end) in enumerate(zip(r, e, strict=True)):
                scores[i, torch.from_numpy(builder.seen_items(int(row), int(end)))] = float("-inf")
        target = torch.from_numpy(targets[lo : lo + batch_size]).to(device)
        t_score = scores.gather(1, target[:, None])
        ranks.append(((scores > t_score).sum(1) + 1).cpu().numpy())
    out = ranking_metrics(np.concatenate(ranks).astype(np.float64))
    out["split"] = split.name
    out["masked_seen"] = int(mask_seen)
    # Forward pass only (inputs already built), scaled to a batch of 128 users.
    out["ms_per_batch_128"] = 1000 * forward_s / max(forward_users, 1) * 128
    return out


def with_window(model: CauseRecommender, recent_len: int) -> CauseRecommender:
    """The same weights reading a window of ``recent_len`` events: every parameter is independent of
    L (positions and time gaps are relative), so a model can be evaluated at the length it will be
    served with, and the events beyond the window go to its history as the rule says."""
    cfg = ModelConfig(**{**model.cfg.to_dict(), "recent_len": recent_len})
    clone = CauseRecommender(cfg, model.item_cats)
    clone.load_state_dict(model.state_dict())
    return clone.to(model.item_cats.device).eval()
