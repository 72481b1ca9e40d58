"""`causerec` command line. Torch is imported inside the commands that train or export, never at
start-up, so `causerec serve` and `causerec load-events` run in a serving-only install."""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from causerec.options import config_parameters, split, with_parameters
from model.config import ModelConfig, TrainConfig
from service.config import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Generative recommendations with CAUSE-compressed long histories.",
)

DATA_DIR = typer.Option(None, "--data-dir", help="folder with the dataset's files (not for synthetic)")
CLUSTER = typer.Option(False, "--cluster", help="REDIS_URL names a node of a Redis Cluster")
CATEGORIES = typer.Option(
    None, "--categories-csv", help="items.csv (item_id,categories) replacing the categories"
)


def _data_spec(
    dataset: str, data_dir: Path | None, categories_csv: Path | None, **options: Any
) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "categories_csv": str(categories_csv.resolve()) if categories_csv else None,
        "options": {k: v for k, v in options.items() if v is not None},
    }


def _synthetic(users: int | None, items: int | None, events: int | None, seed: int) -> dict[str, Any]:
    return {"num_users": users, "num_items": items, "events_per_user": events, "seed": seed}


def _load(spec: dict[str, Any]):  # type: ignore[no-untyped-def]
    from model.data import DatasetError, load_dataset

    try:
        return load_dataset(
            spec["dataset"],
            Path(spec["data_dir"]) if spec["data_dir"] else None,
            categories_csv=spec.get("categories_csv"),
            **spec.get("options", {}),
        )
    except DatasetError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)  # whole: a path must not be cut off
        raise typer.Exit(2) from None


@app.command()
def datasets() -> None:
    """List the dataset adapters and the files each reads."""
    from model.data import ADAPTERS

    for adapter in ADAPTERS.values():
        print(f"{adapter.name:10s} {adapter.files}")


def _train(**opts: Any) -> None:
    """Train HSTU / HSTU-full / CAUSE (or SASRec: --backbone transformer --token-layout items);
    keeps the best checkpoint by validation NDCG@10. The defaults are the recipe of docs/RESULTS.md."""
    from model.train import train as run_training

    dataset = opts["dataset"]
    options = {"min_rating": opts["min_rating"]} if dataset.startswith("ml-") or dataset == "csv" else {}
    if dataset == "synthetic":
        options = _synthetic(
            opts["synthetic_users"], opts["synthetic_items"], opts["synthetic_events"], opts["seed"]
        )
    spec = _data_spec(dataset, opts["data_dir"], opts["categories_csv"], **options)
    data = _load(spec)
    cfg = TrainConfig(**split(opts, TrainConfig), data=spec)
    result = run_training(data, split(opts, ModelConfig), cfg, opts["out"])
    if not result:  # a torchrun rank other than 0: rank 0 reports
        return
    best = result["best_valid"]
    print(
        json.dumps(
            {
                "run": str(opts["out"]),
                "test": result["test"],
                "best_valid_epoch": best["epoch"],
                "best_valid_step": best["step"],
            },
            indent=2,
        )
    )


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


app.command("train")(
    with_parameters(
        _train,
        [
            _option("dataset", str, typer.Option(..., help="adapter name (see `causerec datasets`)")),
            _option("data_dir", Path | None, DATA_DIR),
            _option("categories_csv", Path | None, CATEGORIES),
            _option(
                "min_rating",
                float | None,
                typer.Option(
                    None,
                    help="ratings >= this are events, the rating is the action (MovieLens default 4: "
                    "positives; 0 keeps every rating); csv: the actions are ratings",
                ),
            ),
            _option("synthetic_users", int | None, typer.Option(None, help="synthetic: number of users")),
            _option("synthetic_items", int | None, typer.Option(None, help="synthetic: number of items")),
            _option(
                "synthetic_events", int | None, typer.Option(None, help="synthetic: mean events per user")
            ),
            *config_parameters(ModelConfig),
            *config_parameters(TrainConfig),
            _option("out", Path, typer.Option(..., help="run directory to write")),
        ],
    )
)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory from `causerec train`"),
    split: str = typer.Option("test", help="test | valid"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Full-ranking NDCG@k / MRR / HR@10 over all items, plus forward ms per batch of 128 users."""
    from model.evaluate import evaluate as run_eval
    from model.samples import SampleBuilder
    from model.train import load_model

    spec = json.loads((run_dir / "run.json").read_text())["train"]["data"]
    data = _load(spec)
    model = load_model(run_dir)
    metrics = run_eval(model, SampleBuilder(data, model.cfg), data.split(split))
    print(json.dumps(metrics) if as_json else "\n".join(f"{k:18s} {v}" for k, v in metrics.items()))


@app.command()
def categorize(
    run_dir: Path = typer.Argument(...),
    k: int = typer.Option(..., "--k", help="number of K-Means clusters"),
    out: Path = typer.Option(..., help="items.csv to write (the generic csv adapter's format)"),
    seed: int = typer.Option(0),
) -> None:
    """K-Means over the trained item embeddings -> item categories (paper Table 3)."""
    import csv

    import numpy as np
    from sklearn.cluster import KMeans

    from model.train import load_model

    catalog = json.loads((run_dir / "catalog.json").read_text())
    weights = load_model(run_dir).item_emb.weight.detach().numpy()[1:]
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(
        weights / np.linalg.norm(weights, axis=1, keepdims=True).clip(1e-9)
    )
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["item_id", "categories"])
        writer.writerows((item, f"k{label}") for item, label in zip(catalog["items"], labels, strict=True))
    print(f"wrote {len(labels)} items in {k} clusters to {out}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory from `causerec train`"),
    out: Path = typer.Option(..., help="bundle directory to write"),
    index: str = typer.Option(
        "auto",
        help="approximate item index for CPU serving: auto (200,000 items or more) | always | never",
    ),
) -> None:
    """Write a versioned bundle: ONNX encoder and scorer (top-k inside), the store's history graph
    (bucket tokens) or fold graph (memory compressor), manifest, catalog, and for large catalogues an
    approximate item index."""
    from export.bundle import export_bundle

    if index not in ("auto", "always", "never"):
        typer.secho("error: --index is auto, always or never", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    manifest = export_bundle(run_dir, out, index=index)
    print(json.dumps({"bundle": str(out), "version": manifest.version, "mode": manifest.mode}))


def _embedded_redis(data_dir: Path) -> Any:
    from service.redis_server import EmbeddedRedis, redis_binary

    server = EmbeddedRedis(data_dir, appendfsync="always").start()
    typer.echo(
        f"embedded redis-server ({redis_binary()}) on 127.0.0.1:{server.port}, AOF in {data_dir}", err=True
    )
    return server


@app.command()
def serve(
    bundle: Path = typer.Option(..., help="bundle directory", envvar="CAUSEREC_BUNDLE"),
    redis_url: str | None = typer.Option(
        None, help="Redis URL; without it an embedded redis-server is started", envvar="CAUSEREC_REDIS_URL"
    ),
    redis_data: Path = typer.Option(Path(".causerec/redis"), help="data folder of the embedded redis-server"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    workers: int = typer.Option(1, min=1, envvar="CAUSEREC_WORKERS", help="uvicorn worker processes"),
) -> None:
    """Serve the API with uvicorn (settings: CAUSEREC_* variables, see service/config.py)."""
    import uvicorn

    server = None if redis_url else _embedded_redis(redis_data)
    os.environ["CAUSEREC_BUNDLE"] = str(bundle.resolve())
    os.environ["CAUSEREC_REDIS_URL"] = redis_url or server.url
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            access_log=False,
        )
    finally:
        if server:
            server.stop()


@app.command("wait-for-bundle")
def wait_for_bundle(
    bundle: Path = typer.Argument(..., help="bundle directory that should appear"),
    timeout_s: float = typer.Option(600, help="give up (exit 1) after this long"),
) -> None:
    """Exit 0 once BUNDLE holds a loadable bundle: a start gate for deployments (docker-compose)."""
    from service.bundle import load_bundle
    from service.errors import BundleError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            version = load_bundle(bundle).manifest.version
        except BundleError as exc:
            if time.monotonic() >= deadline:
                typer.echo(f"no usable bundle after {timeout_s:.0f}s: {exc}", err=True)
                raise typer.Exit(1) from None
            time.sleep(1)
            continue
        typer.echo(f"bundle {version} ready at {bundle}")
        return


@app.command("load-events")
def load_events(
    bundle: Path = typer.Option(..., help="bundle whose catalogue maps the ids"),
    dataset: str = typer.Option(...),
    data_dir: Path | None = DATA_DIR,
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0"),
    key_prefix: str = typer.Option("causerec"),
    users_per_batch: int = typer.Option(64),
    cluster: bool = CLUSTER,
    synthetic_users: int | None = typer.Option(None),
    synthetic_items: int | None = typer.Option(None),
    synthetic_events: int | None = typer.Option(None),
    seed: int = typer.Option(0),
    max_categories: int | None = typer.Option(
        None, help="raw buckets kept per user (as CAUSEREC_MAX_CATEGORIES of the service; unset: all)"
    ),
    max_history: int = typer.Option(
        Settings.model_fields["max_history"].default,
        help="memory compressor: raw history events kept (as CAUSEREC_MAX_HISTORY)",
    ),
) -> None:
    """Backfill a dataset's events into Redis through the store's own append path."""
    import asyncio

    from causerec.backfill import backfill

    options = (
        _synthetic(synthetic_users, synthetic_items, synthetic_events, seed) if dataset == "synthetic" else {}
    )
    data = _load(_data_spec(dataset, data_dir, None, **options))
    report = asyncio.run(
        backfill(
            bundle,
            data,
            redis_url,
            key_prefix,
            users_per_batch,
            cluster=cluster,
            max_categories=max_categories,
            max_history=max_history,
        )
    )
    print(json.dumps(report))


@app.command("recompute-tokens")
def recompute_tokens(
    bundle: Path = typer.Option(..., help="the bundle about to be served"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0"),
    key_prefix: str = typer.Option("causerec"),
    cluster: bool = CLUSTER,
) -> None:
    """Build this bundle's history tokens for every user, before traffic moves to it: tokens are
    kept per model version, so the model still serving is not disturbed (docs/DEPLOY.md, rollout)."""
    import asyncio

    from service.redis_client import connect
    from service.runtime import load_model
    from service.store import Store

    async def run() -> int:
        client = connect(redis_url, cluster=cluster)
        try:
            model = await load_model(bundle, client, key_prefix, device="cpu")
            return await Store(client, prefix=key_prefix).recompute_all(model.view)
        finally:
            await client.aclose()

    started = time.perf_counter()
    users = asyncio.run(run())
    print(json.dumps({"users": users, "seconds": round(time.perf_counter() - started, 2)}))


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo"), help="where data, run, bundle and Redis data go"),
    port: int = typer.Option(8000),
    epochs: int | None = typer.Option(None, help="default: 8 on synthetic data, 30 on MovieLens"),
    dataset: str = typer.Option(
        "synthetic", help="synthetic (built in) or a MovieLens release: ml-100k, ml-1m"
    ),
    data_dir: Path | None = typer.Option(None, help="the release's directory (not for synthetic)"),
) -> None:
    """Data -> train -> export -> embedded Redis -> load events -> API and explorer on 127.0.0.1."""
    from causerec.demo import run_demo

    if dataset != "synthetic" and data_dir is None:
        raise typer.BadParameter(f"--dataset {dataset} needs --data-dir", param_hint="--data-dir")
    run_demo(workdir, port, epochs, dataset, data_dir)
