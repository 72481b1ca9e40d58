"""`causerec demo`: the whole product on one machine from nothing but the installed package."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import typer

DEMO_DATA = {"num_users": 1000, "num_items": 2000, "num_categories": 20, "events_per_user": 150, "seed": 0}
DEMO_MODEL = {
    "mode": "cause",
    "recent_len": 32,
    "num_buckets": 8,
    "bucket_size": 32,
    "d_model": 64,
    "num_layers": 3,
    "num_heads": 8,
}


def _step(n: int, text: str) -> None:
    typer.secho(f"[{n}/5] {text}", fg=typer.colors.CYAN, err=True)


def run_demo(workdir: Path, port: int, epochs: int) -> None:
    import uvicorn

    from causerec.backfill import backfill
    from export.bundle import export_bundle
    from model.config import TrainConfig
    from model.data import load_dataset
    from model.train import train
    from service.app import create_app
    from service.config import Settings
    from service.redis_server import EmbeddedRedis

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    _step(1, "generating synthetic users with long-term and drifting interests")
    data = load_dataset("synthetic", **DEMO_DATA)
    typer.echo(f"      {data.describe()}", err=True)
    _step(2, f"training CAUSE + HSTU for up to {epochs} epochs on the CPU")
    cfg = TrainConfig(epochs=epochs, data={"dataset": "synthetic", "data_dir": None, "options": DEMO_DATA})
    result = train(data, DEMO_MODEL, cfg, workdir / "run")
    typer.echo(
        f"      test NDCG@10 {result['test']['ndcg@10']:.4f}, MRR {result['test']['mrr']:.4f}", err=True
    )
    _step(3, "exporting the ONNX bundle")
    manifest = export_bundle(workdir / "run", workdir / "bundle")
    typer.echo(f"      model version {manifest.version}", err=True)
    _step(4, "starting an embedded redis-server and loading every user's events")
    shutil.rmtree(workdir / "redis", ignore_errors=True)
    server = EmbeddedRedis(workdir / "redis", appendfsync="always").start()
    try:
        report = asyncio.run(backfill(workdir / "bundle", data, server.url, "causerec"))
        typer.echo(
            f"      {report['events']} events for {report['users']} users "
            f"({report['events_per_s']:.0f} events/s); redis on 127.0.0.1:{server.port}",
            err=True,
        )
        ready_s = time.perf_counter() - started
        _step(5, f"serving on http://127.0.0.1:{port} (ready after {ready_s:.0f}s; Ctrl-C stops)")
        typer.echo(
            f"""
Try:
  curl -s -X POST http://127.0.0.1:{port}/recommend -H 'content-type: application/json' \\
       -d '{{"user_id": "u1", "k": 5}}'
  curl -s -X POST http://127.0.0.1:{port}/events -H 'content-type: application/json' \\
       -d '{{"events": [{{"user_id": "u1", "item_id": "i42", "action": "like"}}]}}'
API docs: http://127.0.0.1:{port}/docs
""",
            err=True,
        )
        settings = Settings(bundle=workdir / "bundle", redis_url=server.url)
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="info", access_log=False)
    finally:
        server.stop()
