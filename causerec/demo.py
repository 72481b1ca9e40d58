"""`causerec demo`: the whole product on one machine from nothing but the installed package."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import typer

DEMO_DATA = {"num_users": 1000, "num_items": 2000, "num_categories": 20, "events_per_user": 150, "seed": 0}
SYNTHETIC_EPOCHS = 8
REAL_EPOCHS = 30  # ~800 optimiser steps on MovieLens-100K: well above popularity, minutes on 2 cores
REAL_RECENT_LEN = 16  # MovieLens-100K users are short: the quality table's CAUSE row
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


def run_demo(
    workdir: Path, port: int, epochs: int, dataset: str = "synthetic", data_dir: Path | None = None
) -> None:
    import uvicorn

    from causerec.backfill import backfill
    from export.bundle import export_bundle
    from model.baselines import popularity
    from model.config import TrainConfig
    from model.data import load_dataset
    from model.train import train
    from service.app import create_app
    from service.config import Settings
    from service.redis_server import EmbeddedRedis

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    if dataset == "synthetic":
        _step(1, "generating synthetic users with long-term and drifting interests")
        options: dict[str, object] = dict(DEMO_DATA)
    else:
        _step(1, f"reading {dataset} from {data_dir}")
        options = {}
    data = load_dataset(dataset, data_dir, **options)
    typer.echo(f"      {data.describe()}", err=True)
    epochs = epochs or (SYNTHETIC_EPOCHS if dataset == "synthetic" else REAL_EPOCHS)
    _step(2, f"training CAUSE + HSTU for up to {epochs} epochs on the CPU")
    source = {"dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "options": options}
    model = DEMO_MODEL if dataset == "synthetic" else {**DEMO_MODEL, "recent_len": REAL_RECENT_LEN}
    result = train(data, model, TrainConfig(epochs=epochs, data=source), workdir / "run")
    obvious = popularity(data, data.split("test"))
    typer.echo(
        f"      test NDCG@10 {result['test']['ndcg@10']:.4f}, MRR {result['test']['mrr']:.4f} "
        f"(most popular items: {obvious['ndcg@10']:.4f}, {obvious['mrr']:.4f})",
        err=True,
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
        user, item, action = data.users.external(1), data.items.external(42), data.actions.external(1)
        typer.echo(
            f"""
Try:
  curl -s -X POST http://127.0.0.1:{port}/recommend -H 'content-type: application/json' \\
       -d '{{"user_id": "{user}", "k": 5, "include": ["title", "categories"]}}'
  curl -s -X POST http://127.0.0.1:{port}/events -H 'content-type: application/json' \\
       -d '{{"events": [{{"user_id": "{user}", "item_id": "{item}", "action": "{action}",
                        "event_id": "demo-1"}}]}}'
  curl -s http://127.0.0.1:{port}/users/{user}
Explorer: http://127.0.0.1:{port}/ui   API docs: http://127.0.0.1:{port}/docs
""",
            err=True,
        )
        settings = Settings(bundle=workdir / "bundle", redis_url=server.url)
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="info", access_log=False)
    finally:
        server.stop()
