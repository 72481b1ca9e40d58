"""One config for the whole model; checkpoints store it so loading rebuilds the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MODES = ("hstu", "hstu-full", "cause")
# interleaved: item_t, action_t tokens (HSTU); stacked: one token per event (GenRank);
# late-fusion: item tokens only, actions pooled after the backbone (AttnLFA); attn-mvp: item tokens
# only, actions mixed into every layer's attention values (AttnMVP). See model/layouts.py.
TOKEN_LAYOUTS = ("interleaved", "stacked", "late-fusion", "attn-mvp")
# cause: V category bucket tokens (the paper); memory: C folded preference-memory tokens (Rec2PM,
# model/memory.py). Both sit in the same input slots, after the user token.
COMPRESSORS = ("cause", "memory")


@dataclass
class ModelConfig:
    num_items: int  # internal ids 1..num_items; 0 is padding
    num_actions: int  # internal ids 1..num_actions; 0 is padding
    num_categories: int  # real categories 1..C; 0 is bucketing.UNCATEGORIZED
    max_item_categories: int  # width of the item -> categories table
    mode: str = "cause"  # hstu: recent L only; hstu-full: up to L raw events; cause: recent L + V buckets
    recent_len: int = 32  # L: raw events in the input (hstu-full: the cap on the whole history)
    num_buckets: int = 8  # V: history tokens (cause only)
    bucket_size: int = 32  # G: newest items kept per bucket
    d_model: int = 64
    num_layers: int = 3
    num_heads: int = 8
    dropout: float = 0.2
    user_hash_buckets: int = 2048  # rows of the hashed user-token table
    num_time_buckets: int = 64  # log-bucketed time gaps for the relative time bias
    max_rel_pos: int = 512  # relative positions beyond this share one learned bias
    temperature: float = 0.05  # InfoNCE / scoring temperature over cosine similarities
    use_align: bool = True  # ablation: False drops W_align, b_align from the bucket token (eq. 4)
    separators: bool = False  # a learned separator token between the history and the recent events
    backbone: str = "hstu"  # "hstu" (pointwise SiLU attention) or "transformer" (softmax)
    token_layout: str = "interleaved"  # how events become backbone tokens (TOKEN_LAYOUTS)
    compressor: str = "cause"  # how mode=cause compresses the history (COMPRESSORS)
    memory_slots: int = 8  # C: memory tokens (compressor=memory)
    segment_len: int = 8  # S: history events folded into the memory at a time
    memory_weight: float = 0.1  # lambda: weight of the fold-vs-reference consistency loss (docs/VARIANTS.md)

    def __post_init__(self) -> None:
        assert self.mode in MODES, f"mode must be one of {MODES}"
        assert self.backbone in ("hstu", "transformer")
        assert self.token_layout in TOKEN_LAYOUTS, f"token_layout must be one of {TOKEN_LAYOUTS}"
        assert self.compressor in COMPRESSORS, f"compressor must be one of {COMPRESSORS}"
        assert self.token_layout != "attn-mvp" or self.backbone == "hstu", "attn-mvp needs the hstu backbone"
        assert self.d_model % self.num_heads == 0, "d_model must divide into heads"

    @property
    def history_tokens(self) -> int:
        """V (or C with the memory compressor) if the mode uses history tokens, else 0."""
        if self.mode != "cause":
            return 0
        return self.memory_slots if self.uses_memory else self.num_buckets

    @property
    def uses_memory(self) -> bool:
        return self.mode == "cause" and self.compressor == "memory"

    @property
    def tokens_per_event(self) -> int:
        return 2 if self.token_layout == "interleaved" else 1

    @property
    def seq_len(self) -> int:
        """Tokens per input: [user] [V history] [sep]? then 2L (interleaved) or L event tokens."""
        return 1 + self.history_tokens + int(self.separators) + self.tokens_per_event * self.recent_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
