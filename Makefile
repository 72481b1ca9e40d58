# Every repeated command lives here; README names them.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
ORT    ?= cpu
STAMP  := $(VENV)/.installed-$(ORT)

.PHONY: install demo test lint typecheck unit integration fuzz soak results bench bench-variants bench-store bench-events bench-retrieval demo-screenshot loadtest docker-smoke export serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[train,$(ORT),dev]"
	touch $@

install: $(STAMP)

## The main job: synthetic data -> train -> export -> embedded Redis -> API on 127.0.0.1:8000.
demo: install
	$(BIN)/causerec demo

## Everything CI runs: lint, types, the whole test suite.
test: install lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

## The documented fuzz run: schemathesis, 1,000 cases per operation and API key (CI runs 50).
fuzz: install
	CAUSEREC_FUZZ_EXAMPLES=1000 $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_fuzz.py

## The documented soak: 10 minutes of mixed load, RSS sampled (writes loadtests/results/soak-long.json).
soak: install
	$(BIN)/python -m loadtests.soak --preset long

## docs/RESULTS.md: the quality table on ../shared/data/ml-100k (long: hours on 2 cores; resumable).
results: install
	$(BIN)/python -m experiments.results --dataset ml-100k --data-dir ../shared/data/ml-100k --jobs 2

## Offline model latency, CAUSE vs HSTU-full, batches 1 and 32 (writes loadtests/results/bench_model.json).
bench: install
	$(BIN)/python -m loadtests.bench_model --batches 1 32

## Token layouts and compressors at 2,048 events + memory fold costs (writes loadtests/results/bench_variants.json).
bench-variants: install
	$(BIN)/python -m loadtests.bench_model --variants --batches 1 32

## Redis bytes per user and backfill events/s, bucket and memory store (writes loadtests/results/store*.json).
bench-store: install
	$(BIN)/python -m loadtests.store_bench
	$(BIN)/python -m loadtests.store_bench --compressor memory

## The store's /events path without HTTP: as it is, and with a fold after every append (writes loadtests/results/bench_events.json).
bench-events: install
	$(BIN)/python -m loadtests.bench_events

## Retrieval at 100K and 1M items: exact vs faiss / hnswlib / usearch (writes loadtests/results/bench_retrieval_*).
bench-retrieval: install
	$(BIN)/python -m loadtests.bench_retrieval --items 100000 --out loadtests/results/bench_retrieval_100k
	$(BIN)/python -m loadtests.bench_retrieval --items 1000000 --methods 'one TopK' 'faiss HNSW' 'faiss IVF' \
		--out loadtests/results/bench_retrieval_1m

## Explorer screenshot (docs/explorer.png) of a running demo: make demo-screenshot USER_ID=1
USER_ID ?= 1
demo-screenshot: install
	$(BIN)/python -m experiments.explorer_screenshot --user $(USER_ID)

## Load test: floor vs CAUSE vs HSTU-full vs /events (PRESET=ci|small|default; writes loadtests/results/).
PRESET ?= small
WORKERS ?= 1
REPEATS ?= 3
loadtest: install
	$(BIN)/python -m loadtests.run --preset $(PRESET) --workers $(WORKERS) --repeats $(REPEATS)

## Docker: build both images, train, serve 2 replicas behind the gateway, restart Redis, locust,
## hot reload, tear down (root or docker group; writes loadtests/results/docker-smoke.txt).
docker-smoke:
	SMOKE_LOG=loadtests/results/docker-smoke.txt bash deploy/smoke.sh

## Export a run directory to a bundle: make export RUN=runs/c16 BUNDLE=bundles/c16
export: install
	$(BIN)/causerec export $(RUN) --out $(BUNDLE)

## Serve a bundle (embedded Redis unless CAUSEREC_REDIS_URL is set): make serve BUNDLE=bundles/c16
serve: install
	$(BIN)/causerec serve --bundle $(BUNDLE)

clean:
	rm -rf $(VENV) runs bundles .pytest_cache .mypy_cache .ruff_cache
