"""The serving path never imports torch: proven in a subprocess where importing torch fails."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120
    )


def test_blocker_really_blocks_torch() -> None:
    assert _run("import torch").returncode != 0


def test_service_and_serving_commands_import_without_torch() -> None:
    result = _run(
        "import service, service.app, service.engine, service.store, service.bundle, service.runtime\n"
        "import causerec.cli, causerec.backfill\n"
        "from service.app import create_app\n"
        "assert 'torch' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


def test_cli_help_and_serve_help_run_without_torch() -> None:
    result = _run("import sys; sys.argv=['causerec','serve','--help']\nfrom causerec.cli import app\napp()")
    assert "--bundle" in result.stdout, result.stderr
