"""The store's side of /events, without HTTP: batches of events for random users through
``Store.append`` as it is (each user's accepted events appended to their log, folded into the state
once the log holds ``fold_after`` = 16 events) and with a fold after every append (``fold_after`` =
1: every event read, decoded, applied and written back at once, what an append cost before the log),
side by side in one run, each on its own copy of the users. The first starts from the steady state
of a long run: every user's log holds a uniformly random 0 to 15 events, so appends fold users at
the rate they would forever after.

    python -m loadtests.bench_events

Same population and CAUSE bundle as the load test's small preset (1,000 users x 2,048 events,
100,000 items, L=64, V=8, G=32, untrained), loaded through the append path into an embedded
redis-server with AOF ``appendfsync always`` (as ``causerec serve`` runs it). Each pass appends one
batch with each variant, in rotating order, so both see the same machine; the report gives, per
variant, events/s (median and range over ``--repeats`` blocks of ``--batches`` passes), the ratio to
the current path, and the CPU seconds per event of this process (all threads) and of the
redis-server process, which hold across runs where events/s, on a shared 2-core VM, do not. It also
gives a fold's Python work per user by stage, without Redis (``fold_cpu_us_per_user``: 1 and 16
events folded into each user's state; best of 7 timings). Writes loadtests/results/bench_events.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from redis.asyncio import Redis

from causerec.backfill import backfill
from causerec.machine import machine
from export.bundle import export_bundle
from loadtests.run import CAUSE_MODEL, PRESETS, population, untrained_run
from service.redis_client import connect
from service.redis_server import EmbeddedRedis, server_description
from service.runtime import load_model
from service.store import Store
from service.store_codec import State, Tokens, decode_state, decode_tokens, encode_state, encode_tokens
from service.user_state import Appended, ModelView, NewEvent, apply_events, build_tokens, fresh, token_job

PREFIXES = ("ev", "ev1")  # one copy of the users per variant


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str, redis_pid: int, bundle: Path, users: int, batch: int, batches: int, repeats: int
) -> dict[str, Any]:
    client = connect(url)
    variants = {
        "store": Store(client, prefix=PREFIXES[0]),
        "fold every append": Store(client, prefix=PREFIXES[1], fold_after=1),
    }
    models = {name: await load_model(bundle, client, s.prefix, device="cpu") for name, s in variants.items()}
    views = {name: m.view for name, m in models.items()}
    model = models["store"]
    # Each copy has its own store ids; both were loaded alike, so the same events mean the same.
    assert all(np.array_equal(v.ids.items.to_store, model.view.ids.items.to_store) for v in views.values())
    ids, rng, now = model.view.ids, random.Random(0), time.time()
    n_items = len(model.bundle.catalog.items)

    def event(user: str) -> NewEvent:
        return NewEvent(
            user,
            int(ids.items.to_store[rng.randrange(1, n_items + 1)]),
            int(ids.actions.to_store[1]),
            int(now),
            f"e{rng.getrandbits(64)}",
        )

    def events() -> list[NewEvent]:
        return [event(f"u{rng.randrange(users)}") for _ in range(batch)]  # the population's u0 ..

    logged = variants["store"]  # in the steady state
    steady = [event(f"u{u}") for u in range(users) for _ in range(rng.randrange(logged.fold_after))]
    await logged.append(views["store"], steady, now)
    stage_us = {
        f"{k} event{'s' * (k > 1)} per fold": await stages(
            client, variants["fold every append"], views["fold every append"], users, k
        )
        for k in (1, variants["store"].fold_after)
    }
    for name, store in variants.items():  # warm every path
        await store.append(views[name], events(), now)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu = {name: {"process": 0.0, "redis": 0.0} for name in variants}
    for _ in range(repeats):
        spent = dict.fromkeys(variants, 0.0)
        for i in range(batches):
            order = list(variants)[i % len(variants) :] + list(variants)[: i % len(variants)]
            for name in order:
                todo = events()
                process, redis = time.process_time(), process_cpu_s(redis_pid)
                started = time.perf_counter()
                await variants[name].append(views[name], todo, now)
                spent[name] += time.perf_counter() - started
                cpu[name]["process"] += time.process_time() - process
                cpu[name]["redis"] += process_cpu_s(redis_pid) - redis
        for name, seconds in spent.items():
            rates[name].append(batches * batch / seconds)
    await client.aclose()
    current = statistics.median(rates["store"])
    appended = repeats * batches * batch
    out = {
        name: {
            "events_per_s": round(statistics.median(r)),
            "range": [round(min(r)), round(max(r))],
            "vs_store": round(statistics.median(r) / current, 2),
            "cpu_us_per_event": {k: round(v / appended * 1e6, 1) for k, v in cpu[name].items()},
        }
        for name, r in rates.items()
    }
    return {"fold_cpu_us_per_user": stage_us, "variants": out}


async def stages(client: Redis, store: Store, view: ModelView, users: int, k: int) -> dict[str, float]:
    """A fold's Python work per user, stage by stage, without Redis: ``k`` new events (random items,
    each newer than the last) folded into the state of every user (states and tokens read once);
    each stage the best of 7 timings over all users, each timing from freshly decoded states."""
    ids = [f"u{u}" for u in range(users)]
    await store.fold(view, ids)
    pipe = client.pipeline(transaction=False)
    for u in ids:
        pipe.get(store.keys(u).state)
        pipe.get(store.keys(u).tokens(view.version))
    blobs = await pipe.execute()
    states, tokens = blobs[0::2], [decode_tokens(b) for b in blobs[1::2]]
    rng = random.Random(k)
    new = [
        [(2**31 + i, int(view.ids.items.to_store[rng.randrange(1, 1000)]), 1) for i in range(k)] for _ in ids
    ]
    decoded: list[State] = []

    def decode() -> None:
        decoded[:] = [decode_state(b) for b in states]

    def apply() -> list[Appended]:
        return [apply_events(st, evs, view, None) for st, evs in zip(decoded, new, strict=True)]

    decode()
    done = apply()
    # Tokens fresh before the events: only the touched buckets are recomputed, as a fold does.
    kept = [t if fresh(t, view, st) else None for t, st in zip(tokens, decoded, strict=True)]

    def rebuild() -> list[Tokens]:
        jobs = [token_job(d.state, t, d.touched, view) for d, t in zip(done, kept, strict=True)]
        return build_tokens(view, jobs)

    built = rebuild()

    def encode() -> None:
        for d, t in zip(done, built, strict=True):
            encode_state(d.state), encode_tokens(t)

    def best(fn: Callable[[], object], setup: Callable[[], object] = lambda: None) -> float:
        return min(timeit.repeat(fn, setup, number=1, repeat=7)) / users * 1e6

    row = {
        "decode state": best(decode),
        "apply rule": best(apply, decode),
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
            assert redis.process is not None
            for prefix in PREFIXES:
                asyncio.run(backfill(tmp / "bundle", data, redis.url, prefix, progress=False))
            measured = asyncio.run(
                measure(
                    redis.url,
                    redis.process.pid,
                    tmp / "bundle",
                    preset.users,
                    args.batch,
                    args.batches,
                    args.repeats,
                )
            )
    result = {
        "command": f"python -m loadtests.bench_events --batch {args.batch} --batches {args.batches} "
        f"--repeats {args.repeats}",
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "population": {"users": preset.users, "events_per_user": preset.events, "items": preset.items},
        "redis": f"embedded {server_description()}, AOF appendfsync always",
        **measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201 - a benchmark script reports to stdout


if __name__ == "__main__":
    main()
