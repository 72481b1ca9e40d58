"""CAUSE (Categorical User Sequence Compression, WSDM'26) on the HSTU backbone.

Input (section 3): [user] [V history tokens] [sep]? [item_1, action_1, ..., item_L, action_L]
(the default interleaved layout; model/layouts.py has the others).
    item token     = E_item[i] + mean_c E_cat[c]                  (c over the item's categories)
    bucket token j = mean_{i in bucket j} (W_align x_i + b_align) + E_bucket[cat_j]     (eq. 4)
                     where x_i is the item token; empty buckets are masked out
Heads: the state at action_t predicts item_{t+1} (softmax cross-entropy over every item, or
InfoNCE over sampled negatives for large catalogues); the state at item_t predicts action_t
(cross-entropy). Causality keeps both from seeing their own target.
Other layouts say which state feeds which head (model.layouts).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.config import ModelConfig
from model.hstu import Backbone
from model.layouts import make_layout
from model.memory import MemoryCompressor
from model.segments import SEGMENT_KEYS

USER, HISTORY, ITEM, ACTION = range(4)  # token types


class CauseRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, item_categories: torch.Tensor) -> None:
        """item_categories: (num_items + 1, max_item_categories) int64, padded with num_categories + 1."""
        super().__init__()
        self.cfg = cfg
        d, pad_cat = cfg.d_model, cfg.num_categories + 1
        self.register_buffer("item_cats", item_categories.to(torch.int64))
        self.item_emb = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.cat_emb = nn.Embedding(cfg.num_categories + 2, d, padding_idx=pad_cat)
        self.action_emb = nn.Embedding(cfg.num_actions + 1, d, padding_idx=0)
        self.user_emb = nn.Embedding(cfg.user_hash_buckets, d)
        self.type_emb = nn.Embedding(4, d)
        if cfg.uses_memory:
            self.compressor = MemoryCompressor(cfg)
        elif cfg.mode == "cause":
            self.bucket_emb = nn.Embedding(cfg.num_categories + 1, d)
            self.align = nn.Linear(d, d) if cfg.use_align else nn.Identity()
            if isinstance(self.align, nn.Linear):
                # Start as the identity: a default-initialised bias (up to 1/sqrt(d)) is several times
                # the embedding scale and would make every bucket token nearly the same vector.
                nn.init.eye_(self.align.weight)
                nn.init.zeros_(self.align.bias)
        if cfg.separators:
            self.sep = nn.Parameter(torch.zeros(d))
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.backbone = Backbone(cfg)
        self.action_head = nn.Linear(d, cfg.num_actions + 1)
        self.layout = make_layout(cfg)
        # The model's own embeddings start at one scale: a type or bucket embedding at PyTorch's
        # default N(0, 1) would be ~50x the item embeddings and drown which item a token is. Only
        # direct children: the HSTU layers' relative-bias tables (backbone, compressor) start at 0.
        for emb in self.children():
            if not isinstance(emb, nn.Embedding):
                continue
            nn.init.normal_(emb.weight, std=0.02)
            if emb.padding_idx is not None:
                emb.weight.data[emb.padding_idx].zero_()

    # ---- tokens ---------------------------------------------------------------------------------
    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """(...,) int64 item ids -> (..., D)."""
        cats = self.item_cats[items]  # (..., M)
        valid = (cats != self.cfg.num_categories + 1).unsqueeze(-1)
        cat_mean = (self.cat_emb(cats) * valid).sum(-2) / valid.sum(-2).clamp(min=1)
        return self.item_emb(items) + cat_mean

    def aligned_items(self, items: torch.Tensor) -> torch.Tensor:
        """W_align x_i + b_align: the per-item table the store averages (eq. 4, inner term)."""
        return self.align(self.item_tokens(items))

    def history_tokens(self, bucket_items: torch.Tensor, bucket_cats: torch.Tensor) -> torch.Tensor:
        """bucket_items (B, V, G) int64 (0 = empty), bucket_cats (B, V) int64 -> (B, V, D)."""
        valid = (bucket_items > 0).unsqueeze(-1)
        mean = (self.aligned_items(bucket_items) * valid).sum(-2) / valid.sum(-2).clamp(min=1)
        return mean + self.bucket_emb(bucket_cats)

    def scoring_table(self) -> torch.Tensor:
        """(num_items + 1, D) unit-norm item vectors that states are scored against."""
        return F.normalize(
            self.item_tokens(torch.arange(self.cfg.num_items + 1, device=self.item_cats.device)), dim=-1
        )

    # ---- backbone -------------------------------------------------------------------------------
    def encode(
        self,
        user_hash: torch.Tensor,
        hist_tokens: torch.Tensor | None,
        hist_mask: torch.Tensor | None,
        hist_ts: torch.Tensor | None,
        items: torch.Tensor,
        actions: torch.Tensor,
        ts: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the backbone over the whole layout: (B, T, D) states and (B, T) validity, T = cfg.seq_len.

        user_hash (B,); hist_* (B, V, D) / (B, V) or None when the mode has no history;
        items, actions, ts, mask: (B, L) left-padded recent events (mask True = real event).
        """
        b = items.shape[0]
        dev = items.device
        # The user token is stamped with the oldest event of the window, never a later one: through
        # the time bias, a stamp from the newest event would tell every earlier position how far
        # away the future is (and make a window's states differ from those of its prefixes).
        oldest = mask.to(torch.int64).argmax(1, keepdim=True)  # left-padded: the first real event
        now = ts.gather(1, oldest) * mask.any(1, keepdim=True)  # (B, 1); 0 without events
        parts = [self.user_emb(user_hash).unsqueeze(1) + self.type_emb.weight[USER]]
        valid = [torch.ones(b, 1, dtype=torch.bool, device=dev)]
        stamps = [now]
        if self.cfg.mode == "cause":
            assert hist_tokens is not None
            assert hist_mask is not None
            assert hist_ts is not None
            parts.append(hist_tokens + self.type_emb.weight[HISTORY])
            valid.append(hist_mask)
            stamps.append(hist_ts)
        if self.cfg.separators:
            parts.append(self.sep.expand(b, 1, -1))
            valid.append(valid[0])
            stamps.append(now)
        recent, recent_valid, recent_ts = self.layout.tokens(self, items, actions, ts, mask)
        parts.append(recent)
        valid.append(recent_valid)
        stamps.append(recent_ts)
        x = self.input_dropout(torch.cat(parts, dim=1))
        all_valid = torch.cat(valid, dim=1)
        values = self.layout.action_values(self, actions)
        if values is not None:  # the recent tokens come last; the others carry no action
            values = torch.cat([values.new_zeros(b, x.shape[1] - values.shape[1], x.shape[2]), values], 1)
        return self.backbone(x, all_valid, torch.cat(stamps, dim=1), values), all_valid

    @property
    def recent_offset(self) -> int:
        return 1 + self.cfg.history_tokens + int(self.cfg.separators)

    def last_state(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        """(B, D) unit-norm query for the next item.

        That is the layout's next-item query at the newest event (interleaved: the newest action
        token), or for a user with no events the last valid token (the user token, or the last
        history token), so an unknown user still gets recommendations from the user token alone.
        """
        out, valid = self.encode(**inputs)  # type: ignore[arg-type]
        mask, actions = inputs["mask"], inputs["actions"]
        assert mask is not None
        assert actions is not None
        next_query, _ = self.layout.heads(self, out[:, self.recent_offset :], actions, mask)
        positions = torch.arange(valid.shape[1], device=valid.device)
        last = (valid.to(torch.int64) * positions).argmax(1)  # (B,)
        fallback = out[torch.arange(out.shape[0], device=out.device), last]
        state = torch.where(mask[:, -1:], next_query[:, -1], fallback)  # left-padded: newest is last
        return F.normalize(state, dim=-1)

    def score_all(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        """(B, num_items + 1) scores; column 0 (padding) is -inf."""
        scores = self.last_state(**inputs) @ self.scoring_table().T / self.cfg.temperature
        scores[:, 0] = float("-inf")
        return scores

    # ---- training -------------------------------------------------------------------------------
    def forward(
        self, batch: dict[str, torch.Tensor], num_negatives: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training step's losses: DistributedDataParallel hooks into forward()."""
        return self.losses(batch, num_negatives)

    def losses(
        self, batch: dict[str, torch.Tensor], num_negatives: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(next-item loss, action loss, memory consistency). The first two are **sums** over their
        targets, so the trainer weights every target alike whatever batch it falls in; the third is a
        mean, and 0 unless the memory compressor trains by teacher forcing.

        ``num_negatives`` None: full softmax over every item (cheap for catalogues of thousands);
        K: InfoNCE against K uniform negatives shared by the batch (large catalogues).
        A position trains the next-item head where ``target_next`` > 0."""
        inputs, consistency = history_inputs(self, batch, teacher_forcing=True)
        out, _ = self.encode(**inputs)
        next_query, action_in = self.layout.heads(
            self, out[:, self.recent_offset :], batch["actions"], batch["mask"]
        )
        target = batch["target_next"]
        has_next = target > 0
        h = F.normalize(next_query[has_next], dim=-1)  # (P, D)
        pos_ids = target[has_next]
        if num_negatives is None:
            logits = h @ self.scoring_table().T / self.cfg.temperature  # (P, num_items + 1)
            logits[:, 0] = float("-inf")
            item_loss = F.cross_entropy(logits, pos_ids, reduction="sum")
        else:
            item_loss = self._sampled_infonce(h, pos_ids, num_negatives)
        real = batch["action_target"] if "action_target" in batch else batch["mask"]
        action_loss = F.cross_entropy(
            self.action_head(action_in[real]), batch["actions"][real], reduction="sum"
        )
        return item_loss, action_loss, consistency

    def _sampled_infonce(self, h: torch.Tensor, pos_ids: torch.Tensor, num_negatives: int) -> torch.Tensor:
        """Summed InfoNCE of h (P, D) against its positive and K shared uniform negatives; a negative
        that happens to be the positive is masked out."""
        negatives = torch.randint(1, self.cfg.num_items + 1, (num_negatives,), device=h.device)
        pos = F.normalize(self.item_tokens(pos_ids), dim=-1)
        neg = F.normalize(self.item_tokens(negatives), dim=-1)
        logits = torch.cat([(h * pos).sum(-1, keepdim=True), h @ neg.T], dim=1) / self.cfg.temperature
        accidental = torch.cat(
            [torch.zeros_like(pos_ids[:, None], dtype=torch.bool), negatives[None, :] == pos_ids[:, None]],
            dim=1,
        )
        logits = logits.masked_fill(accidental, float("-inf"))
        return F.cross_entropy(logits, torch.zeros_like(pos_ids), reduction="sum")


def model_inputs(model: CauseRecommender, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The encode() arguments from a batch, history tokens built as serving builds them."""
    return history_inputs(model, batch, teacher_forcing=False)[0]


def history_inputs(
    model: CauseRecommender, batch: dict[str, torch.Tensor], teacher_forcing: bool
) -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
    """(encode() arguments, memory consistency loss). History tokens are built here: bucket tokens
    in cause mode, or the memory folded from the history's segments (sequentially, or by teacher
    forcing in training: model.memory)."""
    hist_tokens = hist_mask = hist_ts = None
    consistency = torch.zeros((), device=batch["items"].device)
    if model.cfg.uses_memory:
        segs = {k: batch[k] for k in SEGMENT_KEYS}
        if teacher_forcing:
            hist_tokens, consistency = model.compressor.teacher_forced(model, segs)
        else:
            hist_tokens = model.compressor.sequential(model, segs)
        c = model.cfg.memory_slots
        hist_mask = segs["seg_mask"].flatten(1).any(1, keepdim=True).expand(-1, c)
        hist_ts = (segs["seg_ts"] * segs["seg_mask"]).flatten(1).amax(1, keepdim=True).expand(-1, c)
    elif model.cfg.mode == "cause":
        hist_tokens = model.history_tokens(batch["bucket_items"], batch["bucket_cats"])
        hist_mask, hist_ts = batch["bucket_mask"], batch["bucket_ts"]
    return {
        "user_hash": batch["user_hash"],
        "hist_tokens": hist_tokens,
        "hist_mask": hist_mask,
        "hist_ts": hist_ts,
        "items": batch["items"],
        "actions": batch["actions"],
        "ts": batch["ts"],
        "mask": batch["mask"],
    }, consistency
