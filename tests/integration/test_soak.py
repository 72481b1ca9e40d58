"""The soak runner's CI preset: a 20 s mixed load with no failed request and a live service.

The RSS target (< 10% growth after warmup) is judged by the report of the 10-minute run
(`make soak`, loadtests/results/soak-long.json), not by this short test."""

from __future__ import annotations

import pytest

from loadtests.soak import soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_soak_ci_preset_has_no_errors() -> None:
    report = soak("ci")
    assert set(report["routes"]) == {"/recommend", "/events"}
    assert all(r["requests"] > 0 for r in report["routes"].values())
    assert report["failures"] == 0, report["routes"]
    assert report["service_alive"]
    assert len(report["rss_samples"]) >= 15
    assert report["rss_growth"] is not None
