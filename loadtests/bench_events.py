"""The store's side of /events, without HTTP: batches of events for random users through
``Store.append`` as it is (each round's compare-and-set scripts in one MULTI/EXEC on a single node,
chunks of 32 users, two in flight, replies parsed by hiredis), as it was (one script at a time,
chunks of 64 users one after the other), and as it is with redis-py's pure-Python reply parser
(what runs without the hiredis package), side by side in one run.

    python -m loadtests.bench_events

Same population and CAUSE bundle as the load test's small preset (1,000 users x 2,048 events,
100,000 items, L=64, V=8, G=32, untrained), loaded through the append path into an embedded
redis-server with AOF ``appendfsync always`` (as ``causerec serve`` runs it). Each pass appends one
batch with each variant, in rotating order, so all see the same machine; the report gives
events/s per variant (median and range over ``--repeats`` blocks of ``--batches`` passes) and
each one's ratio to the current path, and the append's Python work per user by stage, without Redis
(``cpu_us_per_user``: best of 7 timings; these hold across runs where events/s do not). Writes
loadtests/results/bench_events.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis._parsers import _AsyncRESP3Parser
from redis.asyncio import Redis

from causerec.backfill import backfill
from causerec.machine import machine
from export.bundle import export_bundle
from loadtests.run import CAUSE_MODEL, PRESETS, population, untrained_run
from service.redis_client import connect
from service.redis_server import EmbeddedRedis
from service.runtime import load_model
from service.store import Store
from service.store_codec import State, Tokens, decode_state, decode_tokens, encode_state, encode_tokens
from service.user_state import Appended, ModelView, NewEvent, apply_events, build_tokens, fresh, token_job


class PreviousAppend(Store):
    """The append path before MULTI/EXEC rounds and chunks in flight together."""

    append_chunk, append_lanes = 64, 1

    def _writes(self) -> Any:
        return self.redis.pipeline(transaction=False)


async def measure(
    url: str, bundle: Path, users: int, batch: int, batches: int, repeats: int
) -> dict[str, Any]:
    client = connect(url)
    # The same client with the pure-Python parser redis-py (>= 5) uses without hiredis: the pool
    # opens its connections on first use, with these arguments.
    python_parser = connect(url)
    python_parser.connection_pool.connection_kwargs["parser_class"] = _AsyncRESP3Parser
    variants = {
        "store": Store(client, prefix="ev"),
        "previous": PreviousAppend(client, prefix="ev"),
        "python parser": Store(python_parser, prefix="ev"),
    }
    model = await load_model(bundle, client, "ev", device="cpu")
    ids, rng, now = model.view.ids, random.Random(0), time.time()
    n_items = len(model.bundle.catalog.items)

    def events() -> list[NewEvent]:
        return [
            NewEvent(
                f"u{rng.randrange(users) + 1}",
                int(ids.items.to_store[rng.randrange(1, n_items + 1)]),
                int(ids.actions.to_store[1]),
                int(now),
                f"e{rng.getrandbits(64)}",
            )
            for _ in range(batch)
        ]

    stage_us = await stages(client, variants["store"], model.view, events())
    for store in variants.values():  # warm every path
        await store.append(model.view, events(), now)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        spent = dict.fromkeys(variants, 0.0)
        for i in range(batches):
            order = list(variants)[i % len(variants) :] + list(variants)[: i % len(variants)]
            for name in order:
                todo = events()
                started = time.perf_counter()
                await variants[name].append(model.view, todo, now)
                spent[name] += time.perf_counter() - started
        for name, seconds in spent.items():
            rates[name].append(batches * batch / seconds)
    await client.aclose()
    await python_parser.aclose()
    current = statistics.median(rates["store"])
    out = {
        name: {
            "events_per_s": round(statistics.median(r)),
            "range": [round(min(r)), round(max(r))],
            "vs_store": round(statistics.median(r) / current, 2),
        }
        for name, r in rates.items()
    }
    return {"cpu_us_per_user": stage_us, "variants": out}


async def stages(client: Redis, store: Store, view: ModelView, batch: list[NewEvent]) -> dict[str, float]:
    """The append's Python work per user, stage by stage, without Redis: one event for each user of
    ``batch`` (their states and tokens read once), the best of 7 timings of each stage over all."""
    users = list(dict.fromkeys(e.user_id for e in batch))
    one = {e.user_id: e for e in batch}
    pipe = client.pipeline(transaction=False)
    for u in users:
        pipe.get(store.keys(u).state)
        pipe.get(store.keys(u).tokens(view.version))
    blobs = await pipe.execute()
    states, tokens = blobs[0::2], [decode_tokens(b) for b in blobs[1::2]]

    def decode() -> list[State]:
        return [decode_state(b) for b in states]

    def apply() -> list[Appended]:
        return [
            apply_events(st, [one[u]], [None], 0.0, view, None) for u, st in zip(users, decode(), strict=True)
        ]

    done = apply()
    # Tokens fresh before the event: only its touched buckets are recomputed, as Store._compute does.
    kept = [t if fresh(t, view, st) else None for t, st in zip(tokens, decode(), strict=True)]

    def rebuild() -> list[Tokens]:
        jobs = [token_job(d.state, t, d.touched, view) for d, t in zip(done, kept, strict=True)]
        return build_tokens(view, jobs)

    built = rebuild()

    def encode() -> None:
        for d, t in zip(done, built, strict=True):
            encode_state(d.state), encode_tokens(t)

    def best(fn: Callable[[], object]) -> float:
        return min(timeit.repeat(fn, number=1, repeat=7)) / len(users) * 1e6

    decode_us = best(decode)
    row = {
        "decode state": decode_us,
        "apply rule": best(apply) - decode_us,  # apply() decodes again: only the rule's share
        "tokens": best(rebuild),
        "encode": best(encode),
    }
    row["total"] = sum(row.values())
    return {k: round(v, 1) for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=100, help="events per append, random users")
    parser.add_argument("--batches", type=int, default=20, help="passes per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_events.json"))
    args = parser.parse_args()
    preset = PRESETS["small"]
    data = population(preset.users, preset.items, preset.events)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        export_bundle(untrained_run(data, tmp / "cause", **CAUSE_MODEL), tmp / "bundle")
        with EmbeddedRedis(tmp / "redis", appendfsync="always") as redis:
            asyncio.run(backfill(tmp / "bundle", data, redis.url, "ev", progress=False))
            measured = asyncio.run(
                measure(redis.url, tmp / "bundle", preset.users, args.batch, args.batches, args.repeats)
            )
    result = {
        "command": f"python -m loadtests.bench_events --batch {args.batch} --batches {args.batches} "
        f"--repeats {args.repeats}",
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "population": {"users": preset.users, "events_per_user": preset.events, "items": preset.items},
        "redis": "embedded redis-server (AOF appendfsync always)",
        **measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201 - a benchmark script reports to stdout


if __name__ == "__main__":
    main()
