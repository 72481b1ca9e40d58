"""Soak: a bounded mixed load (recommend and events users) against one service, sampling its RSS.

    python -m loadtests.soak --preset long     # 10 minutes, loadtests/results/soak-long.json
    python -m loadtests.soak --preset ci       # 20 seconds (the CI test)

Everything on 127.0.0.1: an embedded redis-server, a synthetic population loaded through the
store, one uvicorn worker, locust as the client. Pass: error rate 0 and RSS growth after warmup
below 10% (``rss_growth`` = last sample / first sample after warmup - 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from causerec.backfill import backfill
from causerec.machine import machine
from export.bundle import export_bundle
from loadtests.run import population, untrained_run, write_items
from loadtests.service_process import ServiceProcess
from service.redis_server import EmbeddedRedis

RSS_GROWTH_LIMIT = 0.10


@dataclass(frozen=True)
class SoakPreset:
    seconds: int
    warmup_s: int
    users: int  # locust users (closed loop)
    events_users: int  # of which post batches of 10 events
    population: int  # stored users
    items: int
    events: int  # per stored user


PRESETS = {
    "ci": SoakPreset(20, 5, 4, 1, 200, 2_000, 256),
    "long": SoakPreset(600, 60, 8, 2, 2_000, 20_000, 1_024),
}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sample_rss(pid: int, every_s: float, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while not stop.wait(every_s):
        out.append((round(time.monotonic() - started, 1), rss_bytes(pid)))


def run_locust(url: str, preset: SoakPreset, items_file: Path) -> dict[str, Any]:
    cmd = [
        *(sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py"))),
        *("--headless", "--only-summary", "--json", "-H", url),
        *("-u", str(preset.users), "-r", str(preset.users), "-t", f"{preset.seconds}s"),
        *("--stop-timeout", "10", "--id-users", str(preset.population), "--items-file", str(items_file)),
        *("--recommend-weight", str(preset.users - preset.events_users)),
        *("--events-weight", str(preset.events_users), "--events-batch", "10", "RecommendUser", "EventsUser"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=preset.seconds + 120)
    stats = [s for s in json.loads(done.stdout) if s["name"] != "Aggregated"]
    return {
        s["name"]: {"requests": int(s["num_requests"]), "failures": int(s["num_failures"])} for s in stats
    }


def soak(preset_name: str) -> dict[str, Any]:
    preset = PRESETS[preset_name]
    data = population(preset.population, preset.items, preset.events)
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        items_file = write_items(data, tmp / "items.txt")
        run_dir = untrained_run(
            data, tmp / "run", mode="cause", recent_len=64, num_buckets=8, bucket_size=32, dropout=0.0
        )
        export_bundle(run_dir, tmp / "bundle")
        with EmbeddedRedis(tmp / "redis", appendfsync="always") as redis:
            asyncio.run(backfill(tmp / "bundle", data, redis.url, "soak", progress=False))
            with ServiceProcess(tmp / "bundle", redis.url, tmp / "svc.log", key_prefix="soak") as svc:
                assert svc.process is not None
                stop = threading.Event()
                sampler = threading.Thread(target=sample_rss, args=(svc.process.pid, 1.0, stop, samples))
                sampler.start()
                try:
                    routes = run_locust(svc.url, preset, items_file)
                finally:
                    stop.set()
                    sampler.join()
                service_alive = svc.process.poll() is None
    after_warmup = [rss for t, rss in samples if t >= preset.warmup_s]
    growth = after_warmup[-1] / after_warmup[0] - 1 if len(after_warmup) >= 2 else None
    requests = sum(r["requests"] for r in routes.values())
    failures = sum(r["failures"] for r in routes.values())
    return {
        "command": f"python -m loadtests.soak --preset {preset_name}",
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "preset": preset_name,
        "settings": asdict(preset),
        "routes": routes,
        "requests": requests,
        "failures": failures,
        "error_rate": failures / requests if requests else None,
        "service_alive": service_alive,
        "rss_mb_after_warmup": round(after_warmup[0] / 2**20, 1) if after_warmup else None,
        "rss_mb_end": round(after_warmup[-1] / 2**20, 1) if after_warmup else None,
        "rss_mb_max": round(max(after_warmup) / 2**20, 1) if after_warmup else None,
        "rss_growth": round(growth, 4) if growth is not None else None,
        "passed": bool(
            requests and failures == 0 and service_alive and growth is not None and growth < RSS_GROWTH_LIMIT
        ),
        "rss_samples": [(t, round(rss / 2**20, 1)) for t, rss in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="long")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    args = parser.parse_args()
    report = soak(args.preset)
    out = args.out or Path("loadtests/results") / f"soak-{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
