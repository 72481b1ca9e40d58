"""The machine a figure was measured on, written next to every committed number."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def machine() -> str:
    """CPU model, core count, OS and Python, e.g. "AMD EPYC, 2 cores, Linux 6.1, Python 3.11.7"."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    return (
        f"{cpu}, {cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def gpu() -> str | None:
    """The first NVIDIA GPU's name and driver as nvidia-smi reports them; None without one."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    if not lines:
        return None
    name, driver = (field.strip() for field in lines[0].split(",")[:2])
    return f"{name} (driver {driver})"
