"""Where a worker's time goes: py-spy samples the CAUSE service while locust drives one traffic mix.

    python -m loadtests.profile --preset small --modes read-mostly mixed events

Same population, bundle and service settings as ``loadtests.run`` (one worker). For each mode (in
order: events stale the query states that read-mostly assumes cached), py-spy records the uvicorn
process (every thread, idle samples included) for one locust step; the report gives, per thread, the
share of the step it was busy, and the frames of this repository's code that held the busy samples
(inclusive: a frame counts every sample it is on the stack of). Sampling slows the service, so read
the shares, not the throughput printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from causerec.backfill import backfill
from causerec.machine import machine
from export.bundle import export_bundle
from loadtests.run import CAUSE_MODEL, PRESETS, locust_step, population, untrained_run, warm, write_items
from loadtests.service_process import ServiceProcess
from service.redis_server import EmbeddedRedis

MODES = {  # name -> (locust classes, route, extra locust options, concurrent users)
    "read-mostly": (["RecommendUser"], "/recommend", [], 64),
    "mixed": (
        ["MixedUser"],
        "/recommend",
        ["--recommend-weight", "4", "--events-weight", "1", "--events-batch", "1"],
        16,
    ),
    "events": (["EventsUser"], "/events", ["--events-batch", "100"], 1),
}
IDLE = ("select", "epoll", "wait (threading", "_worker (concurrent", "get (queue", "Runner.run")
OWN = ("service/", "model/")


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """py-spy's collapsed stacks -> busy share per thread and the busiest frames of our own code."""
    samples: collections.Counter[str] = collections.Counter()
    busy: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        parts = stack.split(";")
        thread = next((p.split(":", 1)[-1].strip() for p in parts if p.startswith("thread (")), "?")
        samples[thread] += int(count)
        if any(k in parts[-1] for k in IDLE):
            continue
        busy[thread] += int(count)
        for frame in {p for p in parts if any(f" ({o}" in p for o in OWN)}:
            frames[frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0]] += int(count)
    total_busy = sum(busy.values()) or 1
    wall = samples.get("MainThread", 1)  # the event loop: sampled once per tick, busy or not
    return {
        "busy_share_of_wall": {t: round(n / wall, 3) for t, n in busy.most_common() if n / wall >= 0.01},
        "own_frames_share_of_busy": {f: round(n / total_busy, 3) for f, n in frames.most_common(top)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=list(MODES), help="run in this order: reads first"
    )
    parser.add_argument("--out", type=Path, default=None, help="report path without suffix")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    out = args.out or Path("loadtests/results") / f"profile-{args.preset}"
    data = population(preset.users, preset.items, preset.events)
    result: dict[str, Any] = {"command": " ".join(["python -m loadtests.profile", *sys.argv[1:]])}
    result["machine"] = machine()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        export_bundle(untrained_run(data, tmp / "cause", **CAUSE_MODEL), tmp / "bundle")
        extra = ["--id-users", str(preset.users), "--items-file", str(write_items(data, tmp / "items.txt"))]
        with EmbeddedRedis(tmp / "redis", appendfsync="always") as redis:
            asyncio.run(backfill(tmp / "bundle", data, redis.url, "lt", progress=False))
            with ServiceProcess(
                tmp / "bundle", redis.url, tmp / "svc.log", key_prefix="lt", max_wait_ms="2"
            ) as svc:
                asyncio.run(warm(svc.url, preset.users))
                assert svc.process is not None
                for mode in args.modes:
                    classes, route, options, users = MODES[mode]
                    raw = tmp / f"{mode}.txt"
                    spy = subprocess.Popen(
                        [Path(sys.executable).with_name("py-spy"), "record", "-p", str(svc.process.pid),
                         "-d", str(preset.step_s), "-r", "200", "-f", "raw", "-o", str(raw),
                         "--nonblocking", "--idle", "--threads"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    stats = locust_step(svc.url, route, classes, users, preset.step_s, [*extra, *options])
                    spy.wait()
                    result[mode] = {"users": users, "load_while_sampled": stats, **summarize(raw)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
