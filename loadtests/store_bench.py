"""Store sizing: Redis bytes per user and backfill events/s at L=64, V=8, G=32, d=64.

    python -m loadtests.store_bench --out loadtests/results/store.json
    python -m loadtests.store_bench --compressor memory     # C=8, S=8: loadtests/results/store_memory.json

Synthetic users with long histories (default 1,000 users x 2,048 events, 20 categories) are
loaded through the store's own append path into an embedded redis-server (AOF, appendfsync
always, as `causerec serve` runs it); then MEMORY USAGE is summed over every key of a sample of
users.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from redis.asyncio import Redis

from causerec.backfill import backfill
from model.results import machine
from service.redis_server import EmbeddedRedis
from service.store_codec import user_keys


async def bytes_per_user(url: str, users: list[str], prefix: str, names: list[str]) -> dict[str, float]:
    """Mean MEMORY USAGE of each of a user's keys named (UserKeys fields), and their total."""
    client = Redis.from_url(url)
    totals: dict[str, list[int]] = {name: [] for name in names}
    try:
        for user in users:
            k = user_keys(prefix, user)
            for name in names:
                totals[name].append(int(await client.memory_usage(getattr(k, name), samples=0) or 0))
    finally:
        await client.aclose()
    out = {name: float(np.mean(v)) for name, v in totals.items()}
    out["total"] = sum(out.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2048)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--compressor", choices=["cause", "memory"], default="cause")
    parser.add_argument("--out", type=Path, default=None, help="default: results/store[_memory].json")
    args = parser.parse_args()
    memory = args.compressor == "memory"
    args.out = args.out or Path("loadtests/results") / ("store_memory.json" if memory else "store.json")
    shape = {"memory_slots": 8, "segment_len": 8} if memory else {"num_buckets": 8, "bucket_size": 32}

    from export.bundle import export_bundle
    from model.data import load_dataset
    from model.train import TrainConfig, train

    spec = {
        "num_users": args.users,
        "num_items": args.items,
        "num_categories": 20,
        "events_per_user": args.events,
        "fixed_length": True,
        "seed": 0,
    }
    data = load_dataset("synthetic", **spec)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Sizes and rates do not depend on the weights: one short epoch gives a bundle of the right shapes
        # whose catalogue covers every item of the data.
        train(
            data,
            {"mode": "cause", "recent_len": 64, "d_model": 64, "compressor": args.compressor, **shape},
            # Teacher forcing holds every segment of every sample in the batch: 2,048-event users
            # need small batches to fit in memory.
            TrainConfig(epochs=1, samples_per_user=1, max_eval_users=64, batch_size=8 if memory else 128),
            root / "run",
            progress=False,
        )
        export_bundle(root / "run", root / "bundle")
        with EmbeddedRedis(root / "redis", appendfsync="always") as server:
            report: dict[str, Any] = asyncio.run(backfill(root / "bundle", data, server.url, "bench"))
            sample = [
                data.users.external(r + 1) for r in range(0, data.num_users, max(1, data.num_users // 100))
            ]
            names = ["recent", "history", "memory", "tokens"] if memory else ["recent", "buckets", "tokens"]
            sizes = asyncio.run(bytes_per_user(server.url, sample, "bench", names))
    result = {
        "command": "python -m loadtests.store_bench "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "compressor": args.compressor,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {
            "L": 64,
            **({"C": 8, "S": 8} if memory else {"V": 8, "G": 32}),
            "d": 64,
            "categories": 20,
            "events_per_user": args.events,
            "redis": "embedded redis-server 6.2, AOF appendfsync always",
        },
        "backfill": report,
        "bytes_per_user": sizes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201 - a benchmark script reports to stdout


if __name__ == "__main__":
    main()
