"""Does the memory compressor's consistency weight collapse the memory? (docs/VARIANTS.md)

    python -m experiments.memory_probe --weights 0.1 1 --out docs/results/memory_probe.json

Trains the memory compressor on the planted synthetic data of the long-term-signal test (users
with 4 persistent favourite categories, a 4-event recent window) once per weight lambda and
reports, on the test users: NDCG@10, how much the memory differs between users (std over users,
mean over dimensions; the memory is LayerNorm output, so ~1 is fully spread and ~0 is one memory
for everybody), and NDCG@10 with the memory masked out (equal = the model ignores it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from causerec.machine import machine
from model.cause import model_inputs
from model.config import TrainConfig
from model.data import load_dataset
from model.evaluate import evaluate, to_tensors
from model.samples import SampleBuilder
from model.train import load_model, train

PLANTED = {
    "num_users": 600,
    "num_items": 400,
    "num_categories": 16,
    "events_per_user": 80,
    "p_long_term": 0.5,
    "long_term": 4,
    "seed": 1,
}
MODEL = {
    "mode": "cause",
    "compressor": "memory",
    "recent_len": 4,
    "memory_slots": 4,
    "segment_len": 8,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "dropout": 0.0,
    "user_hash_buckets": 1,
}


class _MemoryMasked:
    """The model with every memory token masked out, for evaluate()."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def score_all(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model.score_all(**{**inputs, "hist_mask": torch.zeros_like(inputs["hist_mask"])})


def probe(weight: float, epochs: int) -> dict[str, float]:
    data = load_dataset("synthetic", **PLANTED)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(epochs=epochs, lr=3e-3, batch_targets=512, warmup_steps=10)
        train(data, {**MODEL, "memory_weight": weight}, cfg, Path(tmp) / "r", progress=False)
        model = load_model(Path(tmp) / "r")
    builder, test = SampleBuilder(data, model.cfg), data.split("test")
    batch = to_tensors(builder.batch(test.users, test.input_end, with_targets=False), "cpu")
    with torch.no_grad():
        memory = model_inputs(model, batch)["hist_tokens"]
    assert memory is not None
    return {
        "memory_weight": weight,
        "test_ndcg@10": float(evaluate(model, builder, test)["ndcg@10"]),
        "test_ndcg@10_memory_masked": float(evaluate(_MemoryMasked(model), builder, test)["ndcg@10"]),  # type: ignore[arg-type]
        "memory_std_over_users": float(memory.std(0).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("docs/results/memory_probe.json"))
    args = parser.parse_args()
    rows = []
    for weight in args.weights:
        rows.append(probe(weight, args.epochs))
        print(json.dumps(rows[-1]), flush=True)
    record = {
        "command": f"python -m model.memory_probe --weights {' '.join(map(str, args.weights))}",
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
