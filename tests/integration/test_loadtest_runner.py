"""The load-test runner's CI preset: proves the whole pipeline runs; its numbers are not quoted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ci_preset_runs_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "ci"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--preset", "ci", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    configs = {r["config"] for r in result["table"]}
    assert configs == {
        "floor",
        "read-mostly",
        "read-mostly at half max",
        "read-mostly at half max, random arrivals",
        "mixed",
        "events",
        "read-mostly, answers not stored",
        "mixed, answers not stored",
        "read, no query cache",
        "mixed, no query cache",
        "hstu-full",
    }
    for row in result["table"]:
        assert row["requests"] > 0, row
        assert row["failures"] == 0, row
        assert row["server_p50_ms_le"] is not None, row
    assert set(result["summary"]["cpu"]["events_per_s"]) == {"1 clients", "4 clients"}
    assert min(result["summary"]["cpu"]["events_per_s"].values()) > 0
    assert result["summary"]["cpu"]["read_mostly_vs_floor"] > 0
    assert result["summary"]["cpu"]["read_mostly_answers_not_stored_vs_floor"] > 0
    assert result["summary"]["cpu"]["read_mostly_vs_floor_per_repeat"]["median"] > 0
    assert result["summary"]["cpu"]["read_mostly_p99_ms_at_half_max_random_arrivals"] is not None
    header, *measured = out.with_suffix(".rows.jsonl").read_text().splitlines()
    assert json.loads(header)["machine"] == result["machine"]
    assert [json.loads(line) for line in measured] == result["rows"]
    assert out.with_suffix(".md").read_text().startswith("Machine:")
    assert out.with_suffix(".png").stat().st_size > 5000


def test_configs_measures_only_the_named_configurations(tmp_path: Path) -> None:
    out = tmp_path / "events"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--preset", "ci", "--configs", "events", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert {r["config"] for r in result["table"]} == {"events"}
    assert set(result["backfill"]) == {"cause"}  # no HSTU-full bundle built or loaded
    assert result["command"].endswith("--configs 'events'")
    assert min(result["summary"]["cpu"]["events_per_s"].values()) > 0
    assert not out.with_suffix(".png").exists()  # no latency curve among the rows: no empty plot
