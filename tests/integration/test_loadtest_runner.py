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
    configs = {r["config"] for r in result["rows"]}
    assert configs == {"floor", "cause", "hstu-full", "events"}
    for row in result["rows"]:
        assert row["requests"] > 0, row
        assert row["failures"] == 0, row
        assert row["server_p50_ms_le"] is not None, row
    assert result["summary"]["events_per_s"] > 0
    assert out.with_suffix(".md").read_text().startswith("Machine:")
    assert out.with_suffix(".png").stat().st_size > 5000
