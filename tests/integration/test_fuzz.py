"""Schemathesis against the live OpenAPI schema of a running service: no 5xx, no schema violation.

CI runs CAUSEREC_FUZZ_EXAMPLES (default 50) cases per operation and key; `make fuzz` runs 1,000.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.integration.conftest import ADMIN_KEY, READ_KEY

pytestmark = pytest.mark.integration

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


@pytest.mark.parametrize(
    "header", [f"X-API-Key: {ADMIN_KEY}", f"X-API-Key: {READ_KEY}", "X-API-Key: wrong", "X-Other: none"]
)
def test_fuzz_finds_no_server_error_and_no_schema_violation(api, header, tmp_path) -> None:  # type: ignore[no-untyped-def]
    examples = os.environ.get("CAUSEREC_FUZZ_EXAMPLES", "50")
    run = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/openapi.json"),
            *("--checks", CHECKS, "--max-examples", examples, "--seed", "7"),
            *("--header", header, "--generation-database", "none", "--no-color"),
            *("--request-timeout", "10", "--workers", "2"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated, summary
    assert int(generated[1]) == int(generated[2]) >= 7 * 10, summary  # every operation was exercised
    print(f"fuzz with {header!r}: {generated[0]}")
