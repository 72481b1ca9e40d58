"""Preference-memory compression (Rec2PM, arXiv 2602.11605): `--compressor memory`.

An alternative to CAUSE's bucket tokens with the same place in the input: C memory tokens.
The history before the recent window is cut into segments of S events counted from the user's
first event, so a full segment never changes again and is folded once:

    M_k = fold(M_{k-1}, segment_k)        M_0 learned; each M_k is C x d

fold runs the compressor's own HSTU layers over one block [memory (C); events (S); queries (C)]
and keeps the queries' outputs (the memory is overwritten, not appended). Inside a block memory
tokens see memory, an event sees the memory and the segment's events up to itself, and queries see
the whole block. The last segment may be open (fewer than S events): it is folded the same way
with its missing events masked, so every history event reaches the model; the open segment's fold
is recomputed as events arrive and becomes the stored M_k once the segment is full.

Training uses self-referential teacher forcing, so segments train in parallel, not one by one:
  pass 1 (reference)  every block at once, where block k's memory tokens are, layer by layer, the
                      states of block k-1's queries: what one pass over [M_0; seg_1; Q; seg_2; Q;
                      ...] with a segment-aware mask computes. Its query outputs are R_k.
  pass 2 (update)     U_k = fold(R_{k-1}, segment_k) for every k at once (R_0 = M_0).
The recommender reads U_K of the newest segment, and lambda * MSE(U_k, sg(R_k)) teaches fold to
reproduce the reference, so the store's one-segment-at-a-time folding tracks what was trained.
Block 1 is the same computation in both passes (U_1 == R_1). Evaluation folds sequentially,
exactly as the store would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from model.config import ModelConfig
from model.hstu import HSTULayer, relative_indices

if TYPE_CHECKING:
    from model.cause import CauseRecommender

MEMORY, EVENT, QUERY = range(3)  # segment-block token types


class MemoryCompressor(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, d = cfg.memory_slots, cfg.d_model
        self.initial = nn.Parameter(torch.randn(c, d) * 0.02)  # M_0
        self.queries = nn.Parameter(torch.randn(c, d) * 0.02)
        self.kind_emb = nn.Parameter(torch.randn(3, d) * 0.02)
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d)
        s = cfg.segment_len
        kind = torch.tensor([MEMORY] * c + [EVENT] * s + [QUERY] * c)
        rows, cols = kind[:, None], kind[None, :]
        causal = torch.ones(c + s + c, c + s + c, dtype=torch.bool).tril()
        allowed = (cols == MEMORY) | (rows == QUERY) | ((rows == EVENT) & (cols == EVENT) & causal)
        self.register_buffer("allowed", allowed, persistent=False)

    # ---- one block ------------------------------------------------------------------------------
    def event_tokens(
        self, model: CauseRecommender, items: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """(N, S) -> (N, S, D): one token per event, item token + action embedding."""
        return model.item_tokens(items) + model.action_emb(actions) + self.kind_emb[EVENT]

    def _masks(
        self, seg_mask: torch.Tensor, seg_ts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """seg_mask, seg_ts (N, S) -> attention mask, scaled mask, relative positions, time buckets."""
        n, c = seg_mask.shape[0], self.cfg.memory_slots
        ones = torch.ones(n, c, dtype=torch.bool, device=seg_mask.device)
        valid = torch.cat([ones, seg_mask, ones], dim=1)
        newest = (seg_ts * seg_mask).amax(1, keepdim=True).expand(n, c)
        ts = torch.cat([newest, seg_ts, newest], dim=1)
        mask2d = self.allowed[None] & valid[:, None, :] & valid[:, :, None]
        attn = mask2d.unsqueeze(1).to(self.initial.dtype)
        scaled = attn / valid.sum(1).to(attn.dtype).view(-1, 1, 1, 1)
        rel_pos, time_bucket = relative_indices(
            valid.to(torch.int64).cumsum(1), ts, self.cfg.max_rel_pos, self.cfg.num_time_buckets
        )
        return attn, scaled, rel_pos, time_bucket

    def fold(
        self,
        model: CauseRecommender,
        memory: torch.Tensor,
        items: torch.Tensor,
        actions: torch.Tensor,
        ts: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """memory (N, C, D) + one segment (N, S) each -> the next memory (N, C, D)."""
        n, c = memory.shape[0], self.cfg.memory_slots
        x = torch.cat(
            [
                memory + self.kind_emb[MEMORY],
                self.event_tokens(model, items, actions),
                (self.queries + self.kind_emb[QUERY]).expand(n, -1, -1),
            ],
            dim=1,
        )
        masks = self._masks(mask, ts)
        for layer in self.layers:
            x = layer(x, *masks)
        return self.norm(x[:, -c:])

    # ---- whole histories ------------------------------------------------------------------------
    def sequential(self, model: CauseRecommender, segs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fold segment by segment, as the store does: (B, K, S) segments -> (B, C, D).

        A user with fewer segments keeps its memory through the missing ones."""
        b, k = segs["seg_mask"].shape[:2]
        memory = self.initial.expand(b, -1, -1)
        for j in range(k):
            new = self.fold(
                model,
                memory,
                segs["seg_items"][:, j],
                segs["seg_actions"][:, j],
                segs["seg_ts"][:, j],
                segs["seg_mask"][:, j],
            )
            present = segs["seg_mask"][:, j, :1].unsqueeze(-1)  # a segment's first event is real
            memory = torch.where(present, new, memory)
        return memory

    def teacher_forced(
        self, model: CauseRecommender, segs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both passes at once: (U_K of each user (B, C, D), the consistency MSE over real blocks)."""
        seg_mask = segs["seg_mask"]  # (B, K, S)
        b, k, s = seg_mask.shape
        c, d = self.cfg.memory_slots, self.cfg.d_model
        flat = {name: t.reshape(b * k, s) for name, t in segs.items()}
        masks = self._masks(flat["seg_mask"], flat["seg_ts"])
        events = self.event_tokens(model, flat["seg_items"], flat["seg_actions"]).view(b, k, s, d)
        # Pass 1: block j's memory input at each layer is block j-1's query states at that layer.
        first_memory = (self.initial + self.kind_emb[MEMORY]).expand(b, c, d)
        query = (self.queries + self.kind_emb[QUERY]).expand(b, k, c, d)
        for layer in self.layers:
            memory_in = torch.cat([first_memory.unsqueeze(1), query[:, :-1]], dim=1)
            out = layer(torch.cat([memory_in, events, query], dim=2).view(b * k, -1, d), *masks)
            out = out.view(b, k, -1, d)
            first_memory, events, query = out[:, 0, :c], out[:, :, c : c + s], out[:, :, c + s :]
        reference = self.norm(query)  # R_j, (B, K, C, D)
        # Pass 2: every block folded from the previous block's reference memory.
        previous = torch.cat([self.initial.expand(b, 1, c, d), reference[:, :-1]], dim=1)
        updated = self.fold(
            model,
            previous.reshape(b * k, c, d),
            flat["seg_items"],
            flat["seg_actions"],
            flat["seg_ts"],
            flat["seg_mask"],
        ).view(b, k, c, d)
        real = seg_mask[:, :, 0]  # (B, K)
        consistency = F.mse_loss(updated[real], reference[real].detach()) if real.any() else updated.sum() * 0
        last = (real.to(torch.int64).sum(1) - 1).clamp(min=0)  # newest real block per user
        return updated[torch.arange(b, device=updated.device), last], consistency
