"""HSTU backbone (Zhai et al. 2024, "Actions Speak Louder than Words", section 3.1).

Per layer (eq. 1-3):
    U, V, Q, K = Split(SiLU(f1(LayerNorm(X))))
    A(X) V(X)  = (SiLU(Q K^T + rab) / n_i) V      pointwise, not softmax; n_i = keys query i sees
    Y(X)       = X + f2(Dropout(U * LayerNorm(A(X) V(X))))
rab = learned relative-position bias + learned bias over log-bucketed time gaps.
With the attn-mvp layout each layer also mixes action values in (model/layouts.py):
    A(X) V(X) + (A(X) * [m < n]) W_a^l a        a_m = the action of token m (0 for other tokens)
the strictly-earlier mask keeps position n from seeing its own action.

Two invariances make training match serving:
- padding: positions come from the count of *valid* tokens and masked keys contribute exactly zero,
  so padding the input to a fixed shape never changes a score;
- prefixes: every quantity query i uses (its keys, its normaliser n_i = the number of valid keys at
  or before i, relative positions and time gaps) depends only on tokens up to i, so the state at
  event k of a training window equals the state serving computes from the window cut at k. (The
  paper's n is the sequence length; a per-sequence count would make a position's state depend on
  how many events follow it.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.config import ModelConfig


def log_time_bucket(gap_s: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """(...,) int64 seconds -> (...,) int64 bucket: floor(log(max(|gap|, 1)) / 0.301), clipped."""
    gap = gap_s.abs().clamp(min=1).to(torch.float32)
    return (torch.log(gap) / 0.301).floor().clamp(max=num_buckets - 1).to(torch.int64)


def relative_indices(
    positions: torch.Tensor, ts: torch.Tensor, max_rel_pos: int, num_time_buckets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions, ts (B, T) int64 -> (relative position, time bucket), each (B, T, T) int64.

    Computed once per forward and shared by every layer: the log-bucketing over B x T x T pairs
    is a large share of the cost of a short sequence.
    """
    rel = (positions[:, :, None] - positions[:, None, :]).clamp(0, max_rel_pos - 1)
    return rel, log_time_bucket(ts[:, :, None] - ts[:, None, :], num_time_buckets)


class _TableLookup(torch.autograd.Function):
    """table[idx] whose backward accumulates with one bincount. Embedding's backward sorts its
    B x T x T indices first: ~10x slower on CPU for tables of a few hundred scalars, and the largest
    single cost of a training step."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.size = table.numel()
        return table[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        flat = torch.bincount(idx.reshape(-1), weights=grad.reshape(-1).double(), minlength=ctx.size)
        return flat.to(grad.dtype), None


def lookup(table: torch.Tensor, idx: torch.Tensor, training: bool) -> torch.Tensor:
    """(N,) table, (...) int64 indices -> (...); the fast backward in training, a plain gather
    (what ONNX export traces) otherwise."""
    return _TableLookup.apply(table, idx) if training else table[idx]


class RelativeBias(nn.Module):
    """rab(i, j) = w_pos[pos_i - pos_j] + w_time[bucket(ts_i - ts_j)], shared across heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos = nn.Embedding(cfg.max_rel_pos, 1)
        self.time = nn.Embedding(cfg.num_time_buckets, 1)
        # As the reference HSTU: zero tables get almost no gradient through SiLU near 0 and stay flat.
        nn.init.normal_(self.pos.weight, std=0.02)
        nn.init.normal_(self.time.weight, std=0.02)

    def forward(self, rel_pos: torch.Tensor, time_bucket: torch.Tensor) -> torch.Tensor:
        """(B, T, T) int64 indices -> (B, 1, T, T) float."""
        pos = lookup(self.pos.weight.view(-1), rel_pos, self.training)
        return (pos + lookup(self.time.weight.view(-1), time_bucket, self.training)).unsqueeze(1)


def bias_tables(model: nn.Module) -> list[nn.Parameter]:
    """Every RelativeBias table in ``model``: the backbone's and any other HSTU layers' (the memory
    compressor's)."""
    return [p for m in model.modules() if isinstance(m, RelativeBias) for p in m.parameters()]


class HSTULayer(nn.Module):
    def __init__(self, cfg: ModelConfig, action_values: bool = False) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        # No bias: tokens without an action (a_m = 0) then add exactly nothing.
        self.action_value = nn.Linear(cfg.d_model, cfg.d_model, bias=False) if action_values else None
        self.norm_in = nn.LayerNorm(cfg.d_model)
        self.uvqk = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rab = RelativeBias(cfg)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor,
        scaled_mask: torch.Tensor,
        rel_pos: torch.Tensor,
        time_bucket: torch.Tensor,
        actions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D); scaled_mask (B, 1, T, T): the causal-and-valid mask / each query's key count;
        actions (B, T, D): action embeddings mixed into the values (attn-mvp), 0 where none."""
        b, t, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)  # each (B, T, D)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) + self.rab(rel_pos, time_bucket)  # (B, H, T, T)
        weights = F.silu(scores) * scaled_mask
        attended = weights @ v  # (B, H, T, D / H)
        if self.action_value is not None and actions is not None:
            a = self.action_value(actions).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            earlier = torch.ones(t, t, dtype=torch.bool, device=x.device).tril(-1).to(x.dtype)
            attended = attended + (weights * earlier) @ a
        attended = attended.transpose(1, 2).reshape(b, t, d)
        return x + self.out(self.dropout(u * self.norm_attn(attended)))


class SoftmaxLayer(nn.Module):
    """A plain pre-norm softmax transformer block (SASRec's), for comparison with HSTU."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor,
        scaled_mask: torch.Tensor,
        rel_pos: torch.Tensor,
        time_bucket: torch.Tensor,
        actions: torch.Tensor | None = None,  # attn-mvp needs the hstu backbone: always None
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for z in self.qkv(self.norm1(x)).chunk(3, dim=-1)
        )
        scores = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        scores = scores.masked_fill(attn_mask == 0, -1e9)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.dropout(self.proj(attended))
        return x + self.dropout(self.mlp(self.norm2(x)))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_rel_pos, self.num_time_buckets = cfg.max_rel_pos, cfg.num_time_buckets
        mvp = cfg.token_layout == "attn-mvp"
        self.layers = nn.ModuleList(
            HSTULayer(cfg, action_values=mvp) if cfg.backbone == "hstu" else SoftmaxLayer(cfg)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        # Learned absolute positions, counted from the oldest token (prefix-consistent): SASRec's only
        # notion of order; optional for HSTU, which has the relative bias (the reference adds both).
        absolute = cfg.backbone == "transformer" or cfg.positions
        self.position = nn.Embedding(cfg.max_rel_pos, cfg.d_model) if absolute else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=0.02)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, ts: torch.Tensor, actions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, T, D), valid (B, T) bool, ts (B, T) int64 -> (B, T, D); actions: see HSTULayer."""
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        mask2d = causal[None] & valid[:, None, :] & valid[:, :, None]
        attn_mask = mask2d.unsqueeze(1).to(x.dtype)  # (B, 1, T, T)
        positions = valid.to(torch.int64).cumsum(1)  # valid-token positions: padding-invariant
        if self.position is not None:
            x = x + self.position(positions.clamp(max=self.max_rel_pos - 1))
        seen = attn_mask.sum(-1, keepdim=True).clamp(min=1)  # (B, 1, T, 1): keys each query sees
        scaled_mask = attn_mask / seen
        rel_pos, time_bucket = relative_indices(positions, ts, self.max_rel_pos, self.num_time_buckets)
        for layer in self.layers:
            x = layer(x, attn_mask, scaled_mask, rel_pos, time_bucket, actions)
        return self.norm(x)
