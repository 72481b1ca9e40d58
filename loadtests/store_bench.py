"""Store sizing: Redis bytes per user, backfill events/s, and what the bucket bound changes.

    python -m loadtests.store_bench                       # bucket store: loadtests/results/store.json
    python -m loadtests.store_bench --compressor memory   # C=8, S=8: loadtests/results/store_memory.json

Synthetic users (20 categories, every user exactly N events) are loaded through the store's own
append path into an embedded redis-server (AOF, appendfsync always, as `causerec serve` runs it),
at 2,048 and 20,000 events per user; each user then gets one read (so a query state and an answer
at k=20 are cached, as for any active user) and, for a production mix, ``--ids-per-user`` event
ids in its dedup set (the ids of a day of activity: they expire after 24 h). MEMORY USAGE is summed
per key over a sample of users. Model weights do not change sizes: the bundle is untrained, L=64,
V=8, G=32, d=64.

The bucket bound (``--max-categories``, the service's CAUSEREC_MAX_CATEGORIES) is measured for its
effect too: the share of users whose V history buckets (what the model reads) differ from the
unbounded rule's, on this population and, when present, on ML-100K in both views.
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
from causerec.machine import machine
from service.redis_server import EmbeddedRedis, server_description
from service.store_codec import user_keys

SHARED_ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


async def bytes_per_user(url: str, users: list[str], prefix: str, version: str) -> dict[str, float]:
    """Mean MEMORY USAGE of each of a user's keys, and their total (keys that do not exist: 0)."""
    client = Redis.from_url(url)
    names = {
        "state": lambda k: k.state,
        "tokens": lambda k: k.tokens(version),
        "query": lambda k: k.query(version),
        "answers": lambda k: k.answers(version),
        "dedup": lambda k: k.dedup,
        "history": lambda k: k.history,
        "memory": lambda k: k.memory(version),
    }
    totals: dict[str, list[int]] = {name: [] for name in names}
    try:
        for user in users:
            k = user_keys(prefix, user)
            for name, key in names.items():
                totals[name].append(int(await client.memory_usage(key(k), samples=0) or 0))
    finally:
        await client.aclose()
    out = {name: round(float(np.mean(v)), 1) for name, v in totals.items() if any(v)}
    out["total"] = round(sum(out.values()), 1)
    return out


async def read_once_and_add_ids(
    url: str, bundle: Path, prefix: str, users: list[str], ids_per_user: int
) -> str:
    """One /recommend read per sampled user at the service's defaults (k=20; caches its query state
    and its answer) and ``ids_per_user`` event ids in its dedup set, as the service would hold for a
    day of that user's events; returns the model version."""
    from service.config import Settings
    from service.metrics import Metrics
    from service.recommend import Recommender
    from service.redis_client import connect
    from service.runtime import load_model
    from service.schemas import RecommendRequest
    from service.store import Store

    client = connect(url)
    try:
        model = await load_model(bundle, client, prefix, device="cpu")
        store = Store(client, prefix=prefix, answers_ttl_s=Settings.model_fields["answers_ttl_s"].default)
        await Recommender(lambda: model, store, Metrics())([RecommendRequest(user_id=u) for u in users])
        now = time.time()
        for user in users:
            await client.zadd(
                user_keys(prefix, user).dedup,
                {f"{user}-{n:08d}-{'x' * 20}": now + 86_400 for n in range(ids_per_user)},
            )
        return model.version
    finally:
        await client.aclose()


def bound_effect(
    name: str, data: Any, recent_len: int, buckets: int, size: int, bound: int
) -> dict[str, Any]:
    """Share of users whose V history buckets at their test input differ between the rule bounded to
    ``bound`` categories (events arriving in time order) and the unbounded rule."""
    from model.bucketing import UserState

    split, differ = data.split("test"), 0
    for row, end in zip(split.users, split.input_end, strict=True):
        events = data.user_events(int(row), int(end))
        full = UserState(recent_len, size)
        kept = UserState(recent_len, size, max_buckets=bound)
        for e in events:
            full.append(e, data.categories_of)
            kept.append(e, data.categories_of)
        differ += full.top(buckets) != kept.top(buckets)
    return {
        "data": name,
        "users": len(split.users),
        "max_categories": bound,
        "users_whose_history_tokens_differ": differ,
        "share": round(differ / len(split.users), 5),
    }


def measure(events: int, users: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from export.bundle import export_bundle
    from loadtests.run import population, untrained_run

    memory = args.compressor == "memory"
    shape = {"memory_slots": 8, "segment_len": 8} if memory else {"num_buckets": 8, "bucket_size": 32}
    data = population(users, args.items, events)
    run = untrained_run(
        data,
        tmp / f"run{events}",
        mode="cause",
        recent_len=64,
        d_model=64,
        compressor=args.compressor,
        **shape,
    )
    export_bundle(run, tmp / f"bundle{events}")
    out: dict[str, Any] = {"events_per_user": events, "users": users}
    for bound in args.max_categories:
        prefix = f"b{events}-{bound}"
        with EmbeddedRedis(tmp / f"redis-{prefix}", appendfsync="always") as server:
            out.setdefault(
                "backfill",
                asyncio.run(
                    backfill(
                        tmp / f"bundle{events}",
                        data,
                        server.url,
                        prefix,
                        progress=False,
                        max_categories=bound or None,
                    )
                ),
            )
            sample = [
                data.users.external(r + 1) for r in range(0, data.num_users, max(1, data.num_users // 100))
            ]
            version = asyncio.run(
                read_once_and_add_ids(server.url, tmp / f"bundle{events}", prefix, sample, args.ids_per_user)
            )
            out[f"bytes_per_user (max_categories={bound or 'all'})"] = asyncio.run(
                bytes_per_user(server.url, sample, prefix, version)
            )
        if memory:
            break  # the memory compressor keeps no buckets
    print(json.dumps(out), flush=True)  # noqa: T201 - progress of a long benchmark
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[2048, 20_000])
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 100], help="users for each --events")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--compressor", choices=["cause", "memory"], default="cause")
    parser.add_argument("--max-categories", type=int, nargs="+", default=[16, 0], help="0: every category")
    parser.add_argument("--ids-per-user", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="default: results/store[_memory].json")
    args = parser.parse_args()
    memory = args.compressor == "memory"
    args.out = args.out or Path("loadtests/results") / ("store_memory.json" if memory else "store.json")
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [measure(e, u, args, Path(tmp)) for e, u in zip(args.events, args.users, strict=True)]
    effects = []
    if not memory:
        from loadtests.run import population
        from model.data import load_dataset

        bound = max(args.max_categories)
        effects.append(
            bound_effect(
                "synthetic, 20 categories, 2,048 events", population(1000, args.items, 2048), 64, 8, 32, bound
            )
        )
        if (SHARED_ML100K / "u.data").is_file():
            for view, rating in (("positives", 4.0), ("all ratings", 0.0)):
                data = load_dataset("ml-100k", SHARED_ML100K, min_rating=rating)
                effects.append(bound_effect(f"ml-100k {view}, L=16", data, 16, 8, 32, bound))
    result = {
        "command": "python -m loadtests.store_bench "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "out"
        ),
        "compressor": args.compressor,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {
            "L": 64,
            **({"C": 8, "S": 8} if memory else {"V": 8, "G": 32}),
            "d": 64,
            "categories": 20,
            "redis": f"embedded {server_description()}, AOF appendfsync always",
        },
        "sizes": sizes,
        "bucket_bound_effect": effects,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201 - a benchmark script reports to stdout


if __name__ == "__main__":
    main()
