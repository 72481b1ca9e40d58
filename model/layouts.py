"""How a recent window of (item, action) events becomes backbone tokens, and which state feeds
which head. The history tokens and the backbone are the same for every layout.

interleaved (HSTU, default): tokens item_1, action_1, ..., item_L, action_L (2L). The item_t
    token predicts action_t; the action_t token predicts item_{t+1}.
stacked (GenRank): one token per event, L tokens. The position that predicts action_t must not
    see action_t, so the token is item_t + action_{t-1} (lagged action conditioning) rather than a
    learned mask action: a mask would need a second copy of each token, one pass serves every
    position, and serving needs no special last token. The state at t predicts action_t; the
    next-item query adds a projection of action_t (known by then) so the newest action still
    counts for the next item.
late-fusion (AttnLFA): only item tokens go through the backbone (L tokens). Afterwards a pooling
    attention with item states as queries and keys and action embeddings as values, over m < n
    only (position n never sees action_n), gives each position a pooled action vector; the heads
    read Linear([item state, pooled action]).
items (SASRec): only item tokens, L of them, and no action anywhere in the input; the state at t
    predicts item_{t+1} (and, if the action loss is on, action_t, which it has not seen).
attn-mvp (AttnMVP, same paper): only item tokens, L of them; inside every backbone layer the
    values of strictly earlier events carry their action too (model.hstu.HSTULayer), so actions
    shape every layer instead of being pooled once at the end. The state at t predicts action_t;
    as in stacked, the next-item query adds a projection of action_t.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from model.config import ModelConfig

if TYPE_CHECKING:
    from model.cause import CauseRecommender

ITEM, ACTION = 2, 3  # token types, as in model.cause


class Layout(nn.Module):
    def tokens(
        self,
        model: CauseRecommender,
        items: torch.Tensor,
        actions: torch.Tensor,
        ts: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L) left-padded events -> recent tokens (B, T, D), their validity and timestamps (B, T)."""
        raise NotImplementedError

    def heads(
        self, model: CauseRecommender, out: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone states of the recent tokens -> (next-item query, action-head input), each (B, L, D):
        entry t predicts item_{t+1} and action_t respectively."""
        raise NotImplementedError

    def action_values(self, model: CauseRecommender, actions: torch.Tensor) -> torch.Tensor | None:
        """(B, L) actions -> (B, L, D) for the backbone's values (attn-mvp), or None."""
        return None


class Interleaved(Layout):
    def tokens(self, model, items, actions, ts, mask):  # type: ignore[no-untyped-def]
        b, length = items.shape
        item_tok = model.item_tokens(items) + model.type_emb.weight[ITEM]
        action_tok = model.action_emb(actions) + model.type_emb.weight[ACTION]
        x = torch.stack([item_tok, action_tok], dim=2).reshape(b, 2 * length, -1)
        return x, mask.repeat_interleave(2, dim=1), ts.repeat_interleave(2, dim=1)

    def heads(self, model, out, actions, mask):  # type: ignore[no-untyped-def]
        return out[:, 1::2], out[:, 0::2]


class Stacked(Layout):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.next_action = nn.Linear(cfg.d_model, cfg.d_model)

    def tokens(self, model, items, actions, ts, mask):  # type: ignore[no-untyped-def]
        previous = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)  # a_{t-1}; 0 = none
        x = model.item_tokens(items) + model.action_emb(previous) + model.type_emb.weight[ITEM]
        return x, mask, ts

    def heads(self, model, out, actions, mask):  # type: ignore[no-untyped-def]
        return out + self.next_action(model.action_emb(actions)), out


class LateFusion(Layout):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.query, self.key = nn.Linear(d, d), nn.Linear(d, d)
        self.fuse = nn.Linear(2 * d, d)
        self.scale = d**-0.5

    def tokens(self, model, items, actions, ts, mask):  # type: ignore[no-untyped-def]
        return model.item_tokens(items) + model.type_emb.weight[ITEM], mask, ts

    def heads(self, model, out, actions, mask):  # type: ignore[no-untyped-def]
        length = out.shape[1]
        earlier = torch.ones(length, length, dtype=torch.bool, device=out.device).tril(-1)  # m < n
        allowed = earlier[None] & mask[:, None, :]  # (B, L, L)
        scores = (self.query(out) @ self.key(out).transpose(1, 2)) * self.scale
        # A position with no earlier event gets weight 0 everywhere (pooled action = 0), not NaN.
        weights = scores.masked_fill(~allowed, -1e9).softmax(-1) * allowed
        pooled = weights @ model.action_emb(actions)
        fused = self.fuse(torch.cat([out, pooled], dim=-1))
        return fused, fused


class ItemsOnly(Layout):
    def tokens(self, model, items, actions, ts, mask):  # type: ignore[no-untyped-def]
        return model.item_tokens(items) + model.type_emb.weight[ITEM], mask, ts

    def heads(self, model, out, actions, mask):  # type: ignore[no-untyped-def]
        return out, out


class AttnMVP(Stacked):
    """Stacked's next-item query, without actions in the tokens: they enter the layers' values."""

    def tokens(self, model, items, actions, ts, mask):  # type: ignore[no-untyped-def]
        return model.item_tokens(items) + model.type_emb.weight[ITEM], mask, ts

    def action_values(self, model, actions):  # type: ignore[no-untyped-def]
        return model.action_emb(actions)


def make_layout(cfg: ModelConfig) -> Layout:
    if cfg.token_layout == "attn-mvp":
        return AttnMVP(cfg)
    if cfg.token_layout == "stacked":
        return Stacked(cfg)
    if cfg.token_layout == "late-fusion":
        return LateFusion(cfg)
    if cfg.token_layout == "items":
        return ItemsOnly()
    return Interleaved()
