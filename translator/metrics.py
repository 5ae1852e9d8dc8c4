"""Prometheus metrics of the translator (one registry per app, so in-process test servers do not share state).

With `--workers N` the CLI points PROMETHEUS_MULTIPROC_DIR at a private directory before the workers start
(unless it is set already); prometheus-client then keeps every worker's values in files there and /metrics,
whichever worker answers it, aggregates all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    first_byte: Histogram
    stream_chunks: Counter
    upstream_errors: Counter
    inflight: Gauge
    litellm_import: Gauge
    # Labelled children looked up once per label set: `labels()` builds a key and takes a lock on every call.
    _children: dict[tuple, Any] = field(default_factory=dict, repr=False)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, route: str, status: str, provider: str, seconds: float) -> None:
        """One finished request: the request counter and the latency histogram."""
        self._child(self.requests, route, status, provider).inc()
        self._child(self.latency, route, provider).observe(seconds)

    def observe_first_byte(self, provider: str, seconds: float) -> None:
        self._child(self.first_byte, provider).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def build_metrics() -> Metrics:
    r = CollectorRegistry()
    return Metrics(
        registry=r,
        requests=Counter("keyrelay_translator_requests", "Requests by route, status and provider",
                         ["route", "status", "provider"], registry=r),
        latency=Histogram("keyrelay_translator_request_seconds",
                          "Request latency (to the last byte for streams)", ["route", "provider"],
                          buckets=_LATENCY_BUCKETS, registry=r),
        first_byte=Histogram("keyrelay_translator_upstream_first_byte_seconds",
                             "Time until the upstream answered (headers for streams)", ["provider"],
                             buckets=_LATENCY_BUCKETS, registry=r),
        stream_chunks=Counter("keyrelay_translator_stream_chunks", "Upstream stream chunks relayed",
                              ["provider"], registry=r),
        upstream_errors=Counter("keyrelay_translator_upstream_errors",
                                "Upstream failures by provider and the status answered",
                                ["provider", "status"], registry=r),
        inflight=Gauge("keyrelay_translator_inflight_requests", "Requests in flight", registry=r,
                       multiprocess_mode="livesum"),
        litellm_import=Gauge("keyrelay_translator_litellm_import_seconds",
                             "Measured LiteLLM import time (0 until imported)", registry=r,
                             multiprocess_mode="max"),
    )
