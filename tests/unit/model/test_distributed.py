"""`causerec train` under torchrun: 2 CPU processes (DDP over gloo) train the same model as one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ARGS = [
    *("--dataset", "synthetic", "--synthetic-users", "120", "--synthetic-items", "200"),
    *("--synthetic-events", "30", "--mode", "cause", "--recent-len", "8", "--buckets", "4"),
    *("--bucket-size", "8", "--d-model", "32", "--layers", "2", "--heads", "4", "--dropout", "0"),
    *("--epochs", "3", "--patience", "5", "--batch-targets", "256", "--negatives", "50", "--seed", "3"),
]


def test_two_process_ddp_matches_the_single_process_run(tmp_path: Path) -> None:
    causerec = str(Path(sys.executable).with_name("causerec"))
    single = subprocess.run(
        [causerec, "train", *ARGS, "--out", str(tmp_path / "single")], capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
            *("--no-python", causerec, "train", *ARGS, "--out", str(tmp_path / "ddp")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count('"run"') == 1  # only rank 0 reports
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    a = torch.load(tmp_path / "single" / "model.pt")["state_dict"]
    b = torch.load(tmp_path / "ddp" / "model.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    ma = json.loads((tmp_path / "single" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ma["best_valid"]["epoch"] == mb["best_valid"]["epoch"]
    assert abs(ma["test"]["ndcg@10"] - mb["test"]["ndcg@10"]) < 1e-6
