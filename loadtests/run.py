"""Load-test runner: CAUSE vs HSTU-full vs the HTTP floor, served identically, in one run.

    python -m loadtests.run --preset small --out loadtests/results/small

Bounded in time and entirely on 127.0.0.1: starts an embedded redis-server, loads a synthetic
population through the store's append path (one key prefix per configuration), starts the
service (same app, same uvicorn settings) for each configuration and drives it with locust at a
series of concurrent users (closed loop). Writes OUT.json, OUT.md and OUT.png.

Configurations:
  floor      POST /noop on the CAUSE service: the HTTP + JSON floor of this app and server.
  cause      POST /recommend, recent L=64 + V=8 history tokens.
  hstu-full  POST /recommend over the raw history, capped at the preset's ``full_cap`` events;
             its engine batch is capped at ``full_max_batch`` users because one user's attention
             at 4,097 tokens already needs ~0.5 GB per layer.
  events     POST /events, batches of 100 events for random users, on the CAUSE service.
Model weights do not change latency, so both models are exported untrained.

Latency: locust's client-side percentiles (whole ms) and the server's own histogram
(causerec_request_seconds, per step; reported as bucket upper bounds). With --workers > 1 the
server histogram covers only the worker that answered /metrics, so use 1 worker to read it.
"""

from __future__ import annotations

import argparse
import asyncio
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
from causerec.machine import machine
from export.bundle import export_bundle
from loadtests.service_process import ServiceProcess
from model.data import Dataset, load_dataset
from model.train import build_model, save_catalog
from service.redis_server import EmbeddedRedis


@dataclass(frozen=True)
class Preset:
    users: int
    items: int
    events: int  # per user
    full_cap: int
    users_steps: tuple[int, ...]  # concurrent locust users for cause and the floor
    full_steps: tuple[int, ...]
    events_steps: tuple[int, ...]
    step_s: int
    full_max_batch: int


PRESETS = {
    "ci": Preset(100, 2_000, 300, 300, (2, 8), (1, 2), (2,), 3, 4),
    "small": Preset(2_000, 100_000, 2_048, 2_048, (1, 2, 4, 16, 32, 64), (1, 2, 4), (1, 4), 15, 1),
    "default": Preset(10_000, 100_000, 2_048, 2_048, (1, 2, 4, 16, 32, 64), (1, 2, 4), (1, 4), 30, 1),
}


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


def locust_step(url: str, classes: list[str], users: int, seconds: int, extra: list[str]) -> dict[str, Any]:
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
    entry = next(s for s in stats if s["name"] != "Aggregated")
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


def run_config(
    name: str,
    svc: ServiceProcess,
    route: str,
    classes: list[str],
    steps: tuple[int, ...],
    seconds: int,
    extra: list[str],
    events_batch: int = 0,
) -> list[dict[str, Any]]:
    rows = []
    for users in steps:
        before = scrape(svc.url, route)
        stats = locust_step(svc.url, classes, users, seconds, extra)
        row = {
            "config": name,
            "route": route,
            "users": users,
            **stats,
            **server_percentiles(before, scrape(svc.url, route)),
        }
        if events_batch:
            row["events_per_s"] = round(stats["rps"] * events_batch, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)  # noqa: T201 - progress of a long run
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = {
        c: max((r["rps"] for r in rows if r["config"] == c and not r["failures"]), default=0.0)
        for c in ("floor", "cause", "hstu-full", "events")
    }
    at1 = {
        c: next((r["p50_ms"] for r in rows if r["config"] == c and r["users"] == 1), None)
        for c in ("cause", "hstu-full")
    }
    return {
        "max_rps": best,
        "recommend_vs_floor": round(best["cause"] / best["floor"], 3) if best["floor"] else None,
        "p50_at_1_user_ms": at1,
        "hstu_full_over_cause_p50_at_1_user": round(at1["hstu-full"] / at1["cause"], 1)
        if at1["cause"] and at1["hstu-full"]
        else None,
        "events_per_s": max(
            (r.get("events_per_s", 0.0) for r in rows if r["config"] == "events"), default=0.0
        ),
    }


def write_report(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Machine: {result['machine']}; preset `{result['preset']}`; {result['workers']} uvicorn worker(s).",
        "",
        "| config | users | req/s | p50 ms | p95 ms | p99 ms | server p50 <= ms | server p99 <= ms | "
        "failures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['users']} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['server_p50_ms_le']} | {r['server_p99_ms_le']} | {r['failures']} |"
        )
    lines += ["", "```json", json.dumps(result["summary"], indent=2), "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, config in enumerate(("floor", "cause", "hstu-full")):
        rs = [r for r in result["rows"] if r["config"] == config and r["requests"]]
        if rs:
            ax.plot(
                [r["rps"] for r in rs], [r["p50_ms"] for r in rs], "o-", color=f"C{i}", label=f"{config} p50"
            )
            ax.plot(
                [r["rps"] for r in rs], [r["p99_ms"] for r in rs], "x--", color=f"C{i}", label=f"{config} p99"
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms, client side)")
    ax.set_title(f"causerec /recommend vs HTTP floor ({result['preset']} preset)")
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
    parser.add_argument("--out", type=Path, default=None, help="report path without suffix")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    out = args.out or Path("loadtests/results") / args.preset
    started = time.monotonic()
    data = population(preset.users, preset.items, preset.events)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        items_file = write_items(data, tmp / "items.txt")
        common = {"d_model": 64, "num_layers": 3, "num_heads": 8, "dropout": 0.0}
        bundles = {
            "cause": untrained_run(
                data, tmp / "cause", mode="cause", recent_len=64, num_buckets=8, bucket_size=32, **common
            ),
            "hstu-full": untrained_run(
                data,
                tmp / "full",
                mode="hstu-full",
                recent_len=preset.full_cap,
                max_rel_pos=2 * preset.full_cap + 2,
                **common,
            ),
        }
        for name, run_dir in bundles.items():
            export_bundle(run_dir, tmp / f"{name}-bundle")
        extra = ["--id-users", str(preset.users), "--items-file", str(items_file)]
        with EmbeddedRedis(tmp / "redis", appendfsync="always") as redis:
            loads = {
                name: asyncio.run(
                    backfill(tmp / f"{name}-bundle", data, redis.url, f"lt-{name}", progress=False)
                )
                for name in bundles
            }
            settings = {"max_wait_ms": "2", "noop_route": "true"}
            with ServiceProcess(
                tmp / "cause-bundle",
                redis.url,
                tmp / "cause.log",
                workers=args.workers,
                key_prefix="lt-cause",
                **settings,
            ) as svc:
                rows += run_config(
                    "floor", svc, "/noop", ["NoopUser"], preset.users_steps, preset.step_s, extra
                )
                rows += run_config(
                    "cause", svc, "/recommend", ["RecommendUser"], preset.users_steps, preset.step_s, extra
                )
                rows += run_config(
                    "events",
                    svc,
                    "/events",
                    ["EventsUser"],
                    preset.events_steps,
                    preset.step_s,
                    [*extra, "--events-batch", "100"],
                    events_batch=100,
                )
            with ServiceProcess(
                tmp / "hstu-full-bundle",
                redis.url,
                tmp / "full.log",
                workers=args.workers,
                key_prefix="lt-hstu-full",
                max_batch_size=str(preset.full_max_batch),
                **settings,
            ) as svc:
                rows += run_config(
                    "hstu-full", svc, "/recommend", ["RecommendUser"], preset.full_steps, preset.step_s, extra
                )
    result = {
        "command": f"python -m loadtests.run --preset {args.preset} --workers {args.workers}",
        "machine": machine(),
        "device": "cpu",
        "preset": args.preset,
        "workers": args.workers,
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
        "rows": rows,
        "summary": summarize(rows),
    }
    write_report(out, result)
    print(json.dumps(result["summary"], indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
