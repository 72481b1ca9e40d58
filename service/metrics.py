"""Prometheus metrics; one registry per app so several apps in one process never collide."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service.store_types import Counters

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "causerec_request_seconds",
            "HTTP request latency",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "causerec_batch_size",
            "requests per engine call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.engine_seconds = Histogram(
            "causerec_engine_seconds",
            "ONNX Runtime call latency: encode (the backbone) or score (every item, top-k)",
            ["graph"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.query_cache = Counter(
            "causerec_query_cache_total",
            "users whose cached query state was fresh (hit) or not",
            ["outcome"],
            registry=r,
        )
        self.answer_cache = Counter(
            "causerec_answer_cache_total",
            "/recommend answers served as stored (hit) or computed",
            ["outcome"],
            registry=r,
        )
        self.redis_seconds = Histogram(
            "causerec_redis_seconds", "store operation latency", ["op"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("causerec_errors_total", "error responses", ["route", "kind"], registry=r)
        self.events = Counter("causerec_events_total", "events posted", ["outcome"], registry=r)
        self.model_info = Gauge(
            "causerec_model_info", "the model being served", ["version", "device"], registry=r
        )
        self.queue_depth = Gauge("causerec_batch_queue_depth", "requests waiting for a batch", registry=r)

    def watch_store(self, counters: Callable[[], Counters]) -> None:
        """Expose the store's own counters at scrape time."""
        self.registry.register(_StoreCollector(counters))


class _StoreCollector(Collector):
    def __init__(self, counters: Callable[[], Counters]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        c = self.counters()
        yield CounterMetricFamily(
            "causerec_store_conflicts", "folds retried after a concurrent fold", c.conflicts
        )
        yield CounterMetricFamily(
            "causerec_store_folds_deferred",
            "users whose full event log an append left to a later fold (too many folds running)",
            c.folds_deferred,
        )
        yield CounterMetricFamily(
            "causerec_store_token_builds", "users whose history tokens a read had to build", c.token_builds
        )
        yield CounterMetricFamily(
            "causerec_store_corrupt_states",
            "user states that could not be read (the truth)",
            c.corrupt_states,
        )
        repairs = CounterMetricFamily(
            "causerec_store_repairs", "unreadable derived values rebuilt from the state", labels=["kind"]
        )
        for kind, n in c.repairs.items():
            repairs.add_metric([kind], n)
        yield repairs
