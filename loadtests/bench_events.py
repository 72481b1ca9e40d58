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
each one's ratio to the current path. Writes loadtests/results/bench_events.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis._parsers import _AsyncRESP3Parser

from causerec.backfill import backfill
from causerec.machine import machine
from export.bundle import export_bundle
from loadtests.run import CAUSE_MODEL, PRESETS, population, untrained_run
from service.redis_client import connect
from service.redis_server import EmbeddedRedis
from service.runtime import load_model
from service.store import Store
from service.user_state import NewEvent


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
    return {"variants": out}


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
