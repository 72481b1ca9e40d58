"""What a trained model's ranking leans on: trained runs evaluated again with one input changed.

    python -m experiments.probe --dataset ml-100k --data-dir ../shared/data/ml-100k RUN_DIR ...

Per run (a `causerec train --out` folder), NDCG@10 on
  valid, test      the splits as trained and reported;
  test, skip       the test target from the input of the validation split (the validation event left
                   out): is the test target harder, or does the newest event mislead?
  no time          valid and test with every timestamp equal: what the time bias contributes;
  no user token    with a per-user token table (--user-hash-buckets N): valid and test with every
                   user on one unused row of it;
  bias |max|       the largest entry of the HSTU layers' relative position / time bias tables (they
                   start at N(0, 0.02)): how far training moved them.
A model whose validation gain over another does not reach the test split shows it here first.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causerec.machine import machine
from model.data import Dataset, Split, load_dataset
from model.evaluate import evaluate
from model.hstu import bias_tables
from model.samples import SampleBuilder
from model.train import load_model


def ndcg(model: Any, builder: SampleBuilder, split: Split) -> float:
    return round(float(evaluate(model, builder, split)["ndcg@10"]), 4)


def probe(run_dir: Path, dataset: Dataset) -> dict[str, float]:
    model = load_model(run_dir)
    builder = SampleBuilder(dataset, model.cfg)
    valid, test = dataset.split("valid"), dataset.split("test")
    out = {"valid": ndcg(model, builder, valid), "test": ndcg(model, builder, test)}
    out["test, skip"] = ndcg(model, builder, Split("skip", test.users, valid.input_end, test.target))
    timeless = copy.copy(dataset)
    timeless.ts = np.zeros_like(dataset.ts)
    flat = SampleBuilder(timeless, model.cfg)
    out["valid, no time"], out["test, no time"] = ndcg(model, flat, valid), ndcg(model, flat, test)
    unused = set(range(model.cfg.user_hash_buckets)) - set(builder._hash.tolist())
    if unused:  # a per-user table (--user-hash-buckets N); the default shared token has nothing to remove
        builder._hash = np.full_like(builder._hash, min(unused))
        out["valid, no user token"] = ndcg(model, builder, valid)
        out["test, no user token"] = ndcg(model, builder, test)
    tables = bias_tables(model)
    if tables:  # the softmax backbone has none
        out["bias |max|"] = round(float(max(p.detach().abs().max() for p in tables)), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--min-rating", type=float, default=None)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {} if args.min_rating is None else {"min_rating": args.min_rating}
    dataset = load_dataset(args.dataset, args.data_dir, **options)
    results = {str(run): probe(run, dataset) for run in args.runs}
    for run, row in results.items():
        print(run, json.dumps(row))
    if args.out:
        command = "python -m experiments.probe " + " ".join(sys.argv[1:])
        report = {"command": command, "machine": machine(), "ndcg@10": results}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
