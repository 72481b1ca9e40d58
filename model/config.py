"""The model's config (checkpoints store it, so loading rebuilds the model) and the training
config. Torch-free: `causerec train` builds its options from these fields without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("hstu", "hstu-full", "cause")
# interleaved: item_t, action_t tokens (HSTU); stacked: one token per event (GenRank);
# late-fusion: item tokens only, actions pooled after the backbone (AttnLFA); attn-mvp: item tokens
# only, actions mixed into every layer's attention values (AttnMVP); items: item tokens only, no
# actions at all (SASRec). See model/layouts.py.
TOKEN_LAYOUTS = ("interleaved", "stacked", "late-fusion", "attn-mvp", "items")
# cause: V category bucket tokens (the paper); memory: C folded preference-memory tokens (Rec2PM,
# model/memory.py). Both sit in the same input slots, after the user token.
COMPRESSORS = ("cause", "memory")


def option(default: Any, help: str, flag: str | None = None) -> Any:
    """A config field with the help text (and, if it differs from the field name, the flag) that
    `causerec train` shows: the CLI is generated from the config, never restated beside it."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass
class ModelConfig:
    num_items: int  # internal ids 1..num_items; 0 is padding
    num_actions: int  # internal ids 1..num_actions; 0 is padding
    num_categories: int  # real categories 1..C; 0 is bucketing.UNCATEGORIZED
    max_item_categories: int  # width of the item -> categories table
    mode: str = option(
        "cause", "hstu: recent L only | hstu-full: up to L raw events | cause: recent L + V buckets"
    )
    recent_len: int = option(32, "L: raw events in the input (hstu-full: the cap on the whole history)")
    num_buckets: int = option(8, "V: history tokens (cause)", "--buckets")
    bucket_size: int = option(32, "G: newest items kept per bucket")
    d_model: int = option(64, "model width")
    num_layers: int = option(3, "backbone layers", "--layers")
    num_heads: int = option(8, "attention heads", "--heads")
    dropout: float = option(0.2, "dropout on the input and after every layer")
    user_hash_buckets: int = option(2048, "rows of the hashed user-token table (1: one token shared by all)")
    num_time_buckets: int = option(64, "log-bucketed time gaps of the relative time bias")
    max_rel_pos: int = option(512, "relative positions beyond this share one learned bias")
    temperature: float = option(0.05, "softmax temperature over cosine similarities")
    use_align: bool = option(
        True, "W_align, b_align in the bucket token (eq. 4); --no-align: ablation", "--align"
    )
    separators: bool = option(False, "a learned separator token between the history and the recent events")
    backbone: str = option("hstu", "hstu (pointwise SiLU attention) | transformer (softmax, SASRec)")
    positions: bool = option(
        False, "learned absolute positions added to the input (always on for the transformer backbone)"
    )
    token_layout: str = option("interleaved", "how events become tokens: " + " | ".join(TOKEN_LAYOUTS))
    compressor: str = option("cause", "cause: V category buckets | memory: C folded memory tokens (Rec2PM)")
    memory_slots: int = option(8, "C: memory tokens (--compressor memory)")
    segment_len: int = option(8, "S: history events folded into the memory at a time")
    memory_weight: float = option(0.1, "lambda: fold-vs-reference consistency loss weight (docs/VARIANTS.md)")

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


@dataclass
class TrainConfig:
    epochs: int = option(50, "the budget: the learning rate decays to its floor over this many epochs")
    batch_targets: int = option(
        2048, "targets per optimiser step, whatever L (about 128 windows of 16 events)"
    )
    lr: float | None = option(
        None, "peak learning rate (AdamW); unset: 3e-3 with --mode cause, 1e-3 otherwise (docs/TRAINING.md)"
    )
    betas: tuple[float, float] = option((0.9, 0.98), "AdamW betas (the reference HSTU's)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(100, "linear warm-up steps, then cosine decay")
    min_lr_ratio: float = option(0.1, "the cosine ends at this fraction of lr")
    # Adam moves a parameter by at most about lr per step, so over ~1,300 steps a bias entry can
    # travel < 1 from its N(0, 0.02) start. Measured, x10 was not chosen (docs/results/ml-100k/findings.md).
    bias_lr_scale: float = option(1.0, "learning-rate multiplier of the relative position / time bias tables")
    num_negatives: int | None = option(
        None,
        "unset: softmax over every item (exact; chunked to the memory budget) | K: InfoNCE against K "
        "sampled negatives, for catalogues too large for that",
        "--negatives",
    )
    item_loss_weight: float = option(1.0, "weight of the next-item loss")
    action_loss_weight: float = option(
        1.0, "weight of the action loss (0: the no-action-loss ablation)", "--action-weight"
    )
    # NDCG@10 over ~1,000 users has a standard error of ~0.007, so one evaluation is noise: training
    # stops when the mean of the last `smoothing` epochs has not improved for `patience` epochs.
    patience: int = option(20, "epochs without a gain of the smoothed validation NDCG@10 before stopping")
    smoothing: int = option(5, "epochs averaged by the early-stopping curve")
    seed: int = option(0, "seeds the weights, the windows and the negatives")
    device: str = option("cpu", "cpu | cuda")
    max_eval_users: int | None = option(None, "validate on this many users per epoch (unset: all)")
    memory_budget_bytes: float = option(2.5e9, "activations per chunk of a step (model.batches.chunks)")
    data: dict[str, Any] = field(default_factory=dict)  # how to reload the dataset


def peak_lr(train: TrainConfig, model: ModelConfig) -> float:
    """The learning rate a run uses: --lr, else its mode's. Validation chose 3e-3 for CAUSE on every
    table it was measured on (the CAUSE paper trains at 5e-3) and did not for HSTU or SASRec, which
    keep the reference HSTU's 1e-3 (docs/RESULTS.md)."""
    if train.lr is not None:
        return train.lr
    return 3e-3 if model.mode == "cause" else 1e-3
