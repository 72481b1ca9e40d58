"""Load-test runner: CAUSE vs HSTU-full vs the HTTP floor, served identically, in one run.

    python -m loadtests.run --preset small --workers 1 --repeats 5 --out loadtests/results/small
    python -m loadtests.run --preset small --repeats 5 --configs events   # only the named rows

Bounded in time and entirely on 127.0.0.1: starts an embedded redis-server, loads a synthetic
population through the store's append path (one key prefix per configuration), starts the
service (same app, same uvicorn settings, ``--workers`` uvicorn workers) for each configuration and
drives it with locust at a series of concurrent users (closed loop). The whole series runs
``--repeats`` times; the report gives, per row, the median and the range over the repeats.
Writes OUT.json, OUT.md and OUT.png.

Configurations:
  floor        POST /noop on the CAUSE service: the HTTP + JSON floor of this app and server.
  read-mostly  POST /recommend for users read once before, so each has a stored answer: one Redis
               round trip, no model call. Then twice more with 16 paced users at half of the best
               throughput measured, the latency target's load: each user sending at a steady rate
               (16 clocks, whose requests bunch), and at random times (together a Poisson stream).
  mixed        POST /recommend and POST /events (one event), 4 to 1, on the same users: events
               make the next read of their user run the backbone and the scorer.
  events       POST /events, batches of 100 events for random users, 1 and 4 clients.
  ..., answers not stored  reads and mixed traffic with CAUSEREC_ANSWERS_TTL_S=0: every read runs
               the scorer from the cached query state (the path before answers were stored).
  ..., no query cache  reads and mixed traffic with CAUSEREC_QUERY_CACHE=false and no stored
               answers: the backbone on every read (the path before query states were cached).
  hstu-full    POST /recommend over the raw history, capped at the preset's ``full_cap`` events;
               its engine batch is capped at ``full_max_batch`` users because one user's attention
               at 4,097 tokens already needs ~0.5 GB per layer.
The CAUSE model has L=64 and V=8 history tokens. Model weights do not change latency, so both
models are exported untrained.

Latency: locust's client-side percentiles (whole ms) and the server's own histogram
(causerec_request_seconds, per step; reported as bucket upper bounds). With --workers > 1 the
server histogram covers only the worker that answered /metrics, so use 1 worker to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from causerec.backfill import backfill
from causerec.machine import gpu, machine
from export.bundle import export_bundle
from loadtests.service_process import ServiceProcess
from model.data import Dataset, load_dataset
from model.train import build_model, save_catalog
from service.redis_server import EmbeddedRedis, server_description


@dataclass(frozen=True)
class Preset:
    users: int
    items: int
    events: int  # per user
    full_cap: int
    read_steps: tuple[int, ...]  # concurrent locust users for the floor and read-mostly
    mixed_steps: tuple[int, ...]
    full_steps: tuple[int, ...]
    events_steps: tuple[int, ...]
    step_s: int
    full_max_batch: int


PRESETS = {
    "ci": Preset(100, 2_000, 300, 300, (2, 8), (4,), (1,), (1, 4), 3, 4),
    "small": Preset(1_000, 100_000, 2_048, 2_048, (1, 4, 16, 64), (16,), (1, 4), (1, 4), 10, 1),
    "default": Preset(10_000, 100_000, 2_048, 2_048, (1, 4, 16, 64), (16,), (1, 4), (1, 4), 30, 1),
}


@dataclass(frozen=True)
class Config:
    name: str
    route: str
    classes: tuple[str, ...]
    steps: tuple[int, ...]
    options: tuple[str, ...] = ()
    events_batch: int = 0  # events per /events post (rows then also report events/s)


def configs(preset: Preset) -> dict[str, list[Config]]:
    """What each service process is measured on, in order (reads before the writes that stale them)."""
    mixed = ("--recommend-weight", "4", "--events-weight", "1", "--events-batch", "1")
    return {
        "cause": [
            Config("floor", "/noop", ("NoopUser",), preset.read_steps),
            Config("read-mostly", "/recommend", ("RecommendUser",), preset.read_steps),
            Config("mixed", "/recommend", ("MixedUser",), preset.mixed_steps, mixed),
            Config("events", "/events", ("EventsUser",), preset.events_steps, ("--events-batch", "100"), 100),
        ],
        "cause-no-answers": [
            Config("read-mostly, answers not stored", "/recommend", ("RecommendUser",), preset.read_steps),
            Config(
                "mixed, answers not stored",
                "/recommend",
                ("MixedUser",),
                preset.mixed_steps,
                mixed,
            ),
        ],
        "cause-uncached": [
            Config("read, no query cache", "/recommend", ("RecommendUser",), preset.mixed_steps),
            Config(
                "mixed, no query cache",
                "/recommend",
                ("MixedUser",),
                preset.mixed_steps,
                mixed,
            ),
        ],
        "hstu-full": [Config("hstu-full", "/recommend", ("RecommendUser",), preset.full_steps)],
    }


HALF_MAX_RANDOM = "read-mostly at half max, random arrivals"
BACKBONE = {"d_model": 64, "num_layers": 3, "num_heads": 8, "dropout": 0.0}
CAUSE_MODEL = {"mode": "cause", "recent_len": 64, "num_buckets": 8, "bucket_size": 32, **BACKBONE}
"""The served CAUSE bundle of the load test and of loadtests.profile (L=64, V=8, G=32)."""


def untrained_run(data: Dataset, run_dir: Path, **model_cfg: Any) -> Path:
    torch.manual_seed(0)
    model = build_model(data, **model_cfg)
    run_dir.mkdir(parents=True)
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict()}, run_dir / "model.pt")
    save_catalog(data, run_dir)
    (run_dir / "run.json").write_text(json.dumps({"train": {"note": "untrained: latency only"}}))
    return run_dir


def population(users: int, items: int, events: int) -> Dataset:
    """The synthetic users every load test serves: 20 categories, exactly ``events`` each."""
    return load_dataset(
        "synthetic",
        num_users=users,
        num_items=items,
        num_categories=20,
        events_per_user=events,
        fixed_length=True,
        seed=0,
    )


def write_items(data: Dataset, path: Path) -> Path:
    """The catalogue's external ids, one per line: locust's --items-file."""
    path.write_text("\n".join(data.items.to_list()) + "\n")
    return path


def scrape(url: str, route: str) -> dict[float, float]:
    """Cumulative server-side histogram of successful requests on ``route``: le -> count."""
    out: dict[float, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if (
            line.startswith("causerec_request_seconds_bucket")
            and f'route="{route}"' in line
            and 'status="200"' in line
        ):
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def server_percentiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float | None]:
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    out: dict[str, float | None] = {}
    for q in (50, 95, 99):
        bound = next((b for b, c in zip(bounds, counts, strict=True) if total and c >= q / 100 * total), None)
        out[f"server_p{q}_ms_le"] = None if bound is None or bound == float("inf") else round(1000 * bound, 2)
    return out


def locust_step(
    url: str, route: str, classes: list[str], users: int, seconds: int, extra: list[str]
) -> dict[str, Any]:
    """One closed-loop step; the client-side figures of ``route`` (mixed steps also post /events)."""
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(Path(__file__).with_name("locustfile.py")),
        "--headless",
        "--only-summary",
        "--json",
        "-H",
        url,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "10",
        *extra,
        *classes,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    stats = json.loads(done.stdout)
    entry = next(s for s in stats if s["name"] == route)
    times = {int(float(k)): v for k, v in entry["response_times"].items()}
    ordered = sorted(times)
    cumulative = np.cumsum([times[t] for t in ordered])
    total = int(entry["num_requests"])

    def pct(q: float) -> int | None:
        return None if not total else int(ordered[int(np.searchsorted(cumulative, q / 100 * total))])

    duration = max(entry["last_request_timestamp"] - entry["start_time"], 1e-9)
    return {
        "requests": total,
        "failures": int(entry["num_failures"]),
        "rps": round(total / duration, 1),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
    }


def measure(config: Config, svc: ServiceProcess, seconds: int, extra: list[str], repeat: int) -> list[dict]:  # type: ignore[type-arg]
    rows = []
    device = svc.env["CAUSEREC_DEVICE"]
    for users in config.steps:
        before = scrape(svc.url, config.route)
        stats = locust_step(
            svc.url, config.route, list(config.classes), users, seconds, [*extra, *config.options]
        )
        row = {
            "device": device,
            "config": config.name,
            "route": config.route,
            "users": users,
            "repeat": repeat,
            **stats,
            **server_percentiles(before, scrape(svc.url, config.route)),
        }
        if config.events_batch:
            row["events_per_s"] = round(stats["rps"] * config.events_batch, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)  # noqa: T201 - progress of a long run
    return rows


async def warm(url: str, users: int, concurrency: int = 32) -> None:
    """Read every user once, so each has a cached query state: the read-mostly steady state."""
    queue = iter(range(users))
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def reader() -> None:
            for n in queue:
                (await http.post("/recommend", json={"user_id": f"u{n}", "k": 20})).raise_for_status()

        await asyncio.gather(*(reader() for _ in range(concurrency)))


def paced(svc: ServiceProcess, rps: float, seconds: int, extra: list[str], repeat: int) -> list[dict]:  # type: ignore[type-arg]
    """read-mostly at half of its own best throughput (16 users, each paced): the latency target's load,
    once with each user sending at a steady rate and once at random (Poisson) times."""
    users = 16
    rows = []
    for arrivals, name in (("steady", "read-mostly at half max"), ("random", HALF_MAX_RANDOM)):
        pace = Config(
            name,
            "/recommend",
            ("RecommendUser",),
            (users,),
            ("--pace", f"{rps / 2 / users:.3f}", "--arrivals", arrivals),
        )
        rows += measure(pace, svc, seconds, extra, repeat)
    return rows


def aggregate(rows: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    """One row per (device, config, users): medians over the repeats, and the req/s range."""
    groups: dict[tuple[str, str, int], list[dict]] = {}  # type: ignore[type-arg]
    for r in rows:
        groups.setdefault((r["device"], r["config"], r["users"]), []).append(r)
    out = []
    for (device, config, users), rs in groups.items():
        med = {
            k: (float(np.median([r[k] for r in rs])) if all(r.get(k) is not None for r in rs) else None)
            for k in (
                "rps",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "server_p50_ms_le",
                "server_p99_ms_le",
                "events_per_s",
            )
            if k in rs[0]
        }
        out.append(
            {
                "device": device,
                "config": config,
                "route": rs[0]["route"],
                "users": users,
                "repeats": len(rs),
                **med,
                "rps_range": [min(r["rps"] for r in rs), max(r["rps"] for r in rs)],
                "requests": sum(r["requests"] for r in rs),
                "failures": sum(r["failures"] for r in rs),
            }
        )
    return out


def ratio_per_repeat(rows: list[dict], config: str, base: str) -> dict[str, Any] | None:  # type: ignore[type-arg]
    """``config``'s best req/s over ``base``'s within each repeat: the median and the range. On a
    shared machine whole repeats move together, so the ratio within one is steadier than the ratio
    of the two medians."""
    ratios = []
    for repeat in sorted({r["repeat"] for r in rows}):
        best = {
            c: max((r["rps"] for r in rows if (r["repeat"], r["config"]) == (repeat, c)), default=0.0)
            for c in (config, base)
        }
        if best[config] and best[base]:
            ratios.append(best[config] / best[base])
    if not ratios:
        return None
    return {
        "median": round(float(np.median(ratios)), 3),
        "range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


def summarize(table: list[dict], rows: list[dict]) -> dict[str, Any]:  # type: ignore[type-arg]
    def best(config: str) -> dict | None:  # type: ignore[type-arg]
        rs = [r for r in table if r["config"] == config and not r["failures"]]
        return max(rs, key=lambda r: r["rps"]) if rs else None

    def at(config: str, users: int, key: str) -> float | None:
        return next((r[key] for r in table if r["config"] == config and r["users"] == users), None)

    top = {c: best(c) for c in sorted({r["config"] for r in table})}
    floor, read = top.get("floor"), top.get("read-mostly")
    half, plain = top.get("read-mostly at half max"), top.get("read-mostly, answers not stored")
    random_half = top.get(HALF_MAX_RANDOM)
    return {
        "max_rps": {c: r["rps"] if r else 0.0 for c, r in top.items()},
        "p99_ms_at_max": {c: r["p99_ms"] if r else None for c, r in top.items()},
        "read_mostly_vs_floor": round(read["rps"] / floor["rps"], 3) if read and floor else None,
        "read_mostly_vs_floor_per_repeat": ratio_per_repeat(rows, "read-mostly", "floor"),
        "read_mostly_answers_not_stored_vs_floor_per_repeat": ratio_per_repeat(
            rows, "read-mostly, answers not stored", "floor"
        ),
        "read_mostly_answers_not_stored_vs_floor": (
            round(plain["rps"] / floor["rps"], 3) if plain and floor else None
        ),
        "read_mostly_p99_ms_at_half_max": half["p99_ms"] if half else None,
        "read_mostly_rps_at_half_max": half["rps"] if half else None,
        "read_mostly_p99_ms_at_half_max_random_arrivals": random_half["p99_ms"] if random_half else None,
        "events_per_s": {
            f"{r['users']} clients": r["events_per_s"] for r in table if r["config"] == "events"
        },
        "p50_at_1_user_ms": {c: at(c, 1, "p50_ms") for c in ("read-mostly", "hstu-full")},
    }


def write_report(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Machine: {result['machine']}; preset `{result['preset']}`; {result['workers']} uvicorn worker(s); "
        f"medians of {result['repeats']} repeats (req/s range in brackets).",
        "",
        "| device | config | users | req/s | events/s | p50 ms | p95 ms | p99 ms | server p50 <= ms "
        "| server p99 <= ms | failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["table"]:
        lo, hi = r["rps_range"]
        lines.append(
            f"| {r['device']} | {r['config']} | {r['users']} | {r['rps']:.0f} [{lo:.0f}-{hi:.0f}] "
            f"| {r.get('events_per_s') or ''} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} "
            f"| {r['server_p50_ms_le']} | {r['server_p99_ms_le']} | {r['failures']} |"
        )
    lines += ["", "```json", json.dumps(result["summary"], indent=2), "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = ("floor", "read-mostly", "read, no query cache", "hstu-full")
    if not any(r["config"] in configs for r in result["table"]):
        return  # e.g. --configs events: no latency curve to draw
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = [(d, c) for d in result["devices"] for c in configs]
    for i, (device, config) in enumerate(curves):
        rs = [
            r
            for r in result["table"]
            if r["device"] == device and r["config"] == config and r["requests"] and r["p50_ms"]
        ]
        label = config if len(result["devices"]) == 1 else f"{config} ({device})"
        if rs:
            ax.plot(
                [r["rps"] for r in rs], [r["p50_ms"] for r in rs], "o-", color=f"C{i}", label=f"{label} p50"
            )
            ax.plot(
                [r["rps"] for r in rs], [r["p99_ms"] for r in rs], "x--", color=f"C{i}", label=f"{label} p99"
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms, client side)")
    ax.set_title(
        f"causerec /recommend vs HTTP floor ({result['preset']} preset, {result['workers']} worker(s))"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="run the whole series this many times")
    parser.add_argument("--out", type=Path, default=None, help="report path without suffix")
    parser.add_argument(
        "--device",
        nargs="+",
        choices=("cpu", "cuda"),
        default=["cpu"],
        help="ONNX Runtime device(s) of the service; several: each configuration on each, one run",
    )
    names = [c.name for series in configs(PRESETS["ci"]).values() for c in series]
    parser.add_argument(
        "--configs", nargs="+", choices=names, default=names, help="measure only these (default: all)"
    )
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    out = args.out or Path("loadtests/results") / f"{args.preset}-w{args.workers}"
    started = time.monotonic()
    data = population(preset.users, preset.items, preset.events)
    rows: list[dict[str, Any]] = []
    plan = {
        service: kept
        for service, series in configs(preset).items()
        if (kept := [c for c in series if c.name in args.configs])
    }
    # Each measured row is appended as it comes: a run cut short (a lease ending) keeps its rows.
    partial = out.with_suffix(".rows.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    server = server_description()  # the embedded server every configuration's store runs on
    found_gpu = gpu()  # nvidia-smi once: the rows' header names it whatever --device says
    partial.write_text(
        json.dumps({"command": " ".join(sys.argv), "machine": machine(), "gpu": found_gpu, "redis": server})
        + "\n"
    )

    def record(new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with partial.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        return new

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        items_file = write_items(data, tmp / "items.txt")
        models = {
            "cause": CAUSE_MODEL,
            "hstu-full": {
                "mode": "hstu-full",
                "recent_len": preset.full_cap,
                "max_rel_pos": 2 * preset.full_cap + 2,
                **BACKBONE,
            },
        }
        needed = {"hstu-full" if service == "hstu-full" else "cause" for service in plan}
        bundles = {name: tmp / f"{name}-bundle" for name in needed}
        for name in needed:
            export_bundle(untrained_run(data, tmp / name, **models[name]), bundles[name])
        if "cause" in needed:
            bundles["cause-uncached"] = bundles["cause-no-answers"] = bundles["cause"]
        extra = ["--id-users", str(preset.users), "--items-file", str(items_file)]
        with EmbeddedRedis(tmp / "redis", appendfsync="always") as redis:
            prefixes = dict.fromkeys(("cause", "cause-no-answers", "cause-uncached"), "lt-cause")
            prefixes["hstu-full"] = "lt-hstu-full"
            loads = {
                name: asyncio.run(backfill(bundles[name], data, redis.url, prefixes[name], progress=False))
                for name in sorted(needed)
            }
            settings = {
                "cause": {"max_wait_ms": "2", "noop_route": "true"},
                "cause-no-answers": {"max_wait_ms": "2", "answers_ttl_s": "0"},
                "cause-uncached": {"max_wait_ms": "2", "query_cache": "false", "answers_ttl_s": "0"},
                "hstu-full": {"max_wait_ms": "2", "max_batch_size": str(preset.full_max_batch)},
            }
            for repeat in range(args.repeats):
                for device, (name, series) in itertools.product(args.device, plan.items()):
                    with ServiceProcess(
                        bundles[name],
                        redis.url,
                        tmp / f"{name}-{device}.log",
                        workers=args.workers,
                        key_prefix=prefixes[name],
                        device=device,
                        **settings[name],
                    ) as svc:
                        for config in series:
                            if config.name.startswith("read-mostly"):  # answers / query states cached
                                asyncio.run(warm(svc.url, preset.users))
                            rows += record(measure(config, svc, preset.step_s, extra, repeat))
                            if config.name == "read-mostly":
                                top = max(r["rps"] for r in rows[-len(config.steps) :])
                                rows += record(paced(svc, top, preset.step_s, extra, repeat))
    table = aggregate(rows)
    result = {
        "command": f"python -m loadtests.run --preset {args.preset} --workers {args.workers} "
        f"--repeats {args.repeats} --device {' '.join(args.device)}"
        + (f" --configs {' '.join(repr(c) for c in args.configs)}" if args.configs != names else ""),
        "machine": machine(),
        "redis": server,
        "devices": args.device,
        "gpu": found_gpu if "cuda" in args.device else None,
        "preset": args.preset,
        "workers": args.workers,
        "repeats": args.repeats,
        "population": {
            "users": preset.users,
            "items": data.num_items,
            "events_per_user": preset.events,
            "hstu_full_cap": preset.full_cap,
            "hstu_full_max_batch": preset.full_max_batch,
        },
        "backfill": loads,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": round(time.monotonic() - started, 1),
        "summary": {
            d: summarize([r for r in table if r["device"] == d], [r for r in rows if r["device"] == d])
            for d in args.device
        },
        "table": table,
        "rows": rows,
    }
    write_report(out, result)
    print(json.dumps(result["summary"], indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
