"""Prometheus metrics of the translator (one registry per app, so in-process test servers do not share state).

Usage metrics (tokens, requests and time to first token per tenant and model, docs/usage.md) are labelled only
with values from the configuration (`UsageLabels`): a tenant not in the configured list is `other`, a request
without one `none`, a target model the configuration does not name `other`. A client choosing model names or
forging tenants therefore never adds a series.

With `--workers N` the CLI points PROMETHEUS_MULTIPROC_DIR at a private directory before the workers start
(unless it is set already); prometheus-client then keeps every worker's values in files there and /metrics,
whichever worker answers it, aggregates all of them. In one process the metrics updated on every request are
plain numbers behind a custom collector (`plain_metrics`, the same exposition at a fraction of the CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from translator.plain_metrics import PlainCounter, PlainGauge, PlainHistogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Time to first token: from the request's arrival to the first upstream chunk relayed.
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60, 120)

NO_TENANT = "none"
OTHER = "other"
# Model label values at most (configured target models beyond this many share `other`).
MAX_MODEL_LABELS = 256


class UsageLabels:
    """The bounded label values of the usage metrics, fixed at start-up from the configuration."""

    __slots__ = ("_tenants", "_models")

    def __init__(self, tenants: Iterable[str], models: Iterable[str]) -> None:
        self._tenants = frozenset(tenants) - {NO_TENANT, OTHER}
        self._models = frozenset(sorted(set(models) - {OTHER})[:MAX_MODEL_LABELS])

    def tenant(self, raw: str | None) -> str:
        if not raw:
            return NO_TENANT
        return raw if raw in self._tenants else OTHER

    def model(self, target_model: str | None) -> str:
        return target_model if target_model in self._models else OTHER

    def max_series(self) -> tuple[int, int]:
        """(tenant values, model values) that can ever appear."""
        return len(self._tenants) + 2, len(self._models) + 1


@dataclass
class Metrics:
    """The metrics. Those updated on every request are `plain_metrics` ones or prometheus-client's (same methods:
    `labels(...)`, `inc`, `observe`, `dec`), see `build_metrics`."""

    registry: CollectorRegistry
    requests: Counter | PlainCounter
    latency: Histogram | PlainHistogram
    first_byte: Histogram | PlainHistogram
    stream_chunks: Counter | PlainCounter
    upstream_errors: Counter
    inflight: Gauge | PlainGauge
    litellm_import: Gauge
    tokens: Counter | PlainCounter
    tenant_requests: Counter | PlainCounter
    ttft: Histogram | PlainHistogram
    usage_estimated: Counter | PlainCounter
    budget_usage: Counter
    labels: UsageLabels = field(default_factory=lambda: UsageLabels((), ()))
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
        key = ("request", route, status, provider)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self.requests.labels(route, status, provider),
                                          self.latency.labels(route, provider))
        pair[0].inc()
        pair[1].observe(seconds)

    def observe_first_byte(self, provider: str, seconds: float) -> None:
        self._child(self.first_byte, provider).observe(seconds)

    def observe_stream_chunks(self, provider: str, chunks: int) -> None:
        self._child(self.stream_chunks, provider).inc(chunks)

    def observe_usage(self, tenant: str | None, model: str | None, status: int, usage: Any,
                      ttft_s: float | None) -> None:
        """One finished messages request: requests by tenant and model, its tokens by kind (when the answer had
        usage), and its time to first token (streams). `tenant` is the x-authz-tenant header and `model` the
        target model, both mapped to their bounded labels here."""
        t = self.labels.tenant(tenant)
        mdl = self.labels.model(model)
        key = ("usage", t, mdl, status // 100)  # bounded label values only: a forged tenant adds no entry
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = _UsageSeries(self, t, mdl, _STATUS_CLASS.get(status // 100, "other"))
        series.requests.inc()
        if usage is not None:
            for kind, n in usage.counts():
                if n:
                    series.tokens(kind).inc(n)
            if usage.estimated:
                series.estimated().inc()
        if ttft_s is not None:
            series.ttft().observe(ttft_s)

    def render(self) -> tuple[bytes, str]:
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class _UsageSeries:
    """The usage metrics' children of one (tenant, model, status class), kept by `Metrics.observe_usage` so a
    request does not map its labels and look up each child again. The children of token kinds, estimates and
    time to first token are created on first use (a series appears only once it has a value)."""

    __slots__ = ("_metrics", "_tenant", "_model", "requests", "_tokens", "_estimated", "_ttft")

    def __init__(self, metrics: Metrics, tenant: str, model: str, status_class: str) -> None:
        self._metrics = metrics
        self._tenant = tenant
        self._model = model
        self.requests = metrics.tenant_requests.labels(tenant, model, status_class)
        self._tokens: dict[str, Any] = {}
        self._estimated: Any = None
        self._ttft: Any = None

    def tokens(self, kind: str) -> Any:
        child = self._tokens.get(kind)
        if child is None:
            child = self._tokens[kind] = self._metrics.tokens.labels(self._tenant, self._model, kind)
        return child

    def estimated(self) -> Any:
        if self._estimated is None:
            self._estimated = self._metrics._child(self._metrics.usage_estimated, self._model)
        return self._estimated

    def ttft(self) -> Any:
        if self._ttft is None:
            self._ttft = self._metrics._child(self._metrics.ttft, self._model)
        return self._ttft


def build_metrics(labels: UsageLabels | None = None, *, plain: bool | None = None) -> Metrics:
    """The translator's metrics in a registry of their own. The ones updated on every request are plain-number
    metrics (`plain_metrics`) in a single process, prometheus-client's own with PROMETHEUS_MULTIPROC_DIR set
    (`--workers N`: only those keep their values where the multiprocess collector merges them). `plain`
    overrides that choice (tests compare both)."""
    if plain is None:
        plain = not os.environ.get(MULTIPROC_ENV)
    r = CollectorRegistry()
    if plain:
        counter: Any = lambda name, doc, labelnames: PlainCounter(name, doc, labelnames, r)  # noqa: E731
        histogram: Any = lambda name, doc, labelnames, buckets: PlainHistogram(  # noqa: E731
            name, doc, labelnames, r, buckets)
        inflight: Any = lambda name, doc: PlainGauge(name, doc, r)  # noqa: E731
    else:
        counter = lambda name, doc, labelnames: Counter(name, doc, labelnames, registry=r)  # noqa: E731
        histogram = lambda name, doc, labelnames, buckets: Histogram(  # noqa: E731
            name, doc, labelnames, buckets=buckets, registry=r)
        inflight = lambda name, doc: Gauge(name, doc, registry=r, multiprocess_mode="livesum")  # noqa: E731
    # Registered in this order (the order of the exposition); the rarely updated ones stay prometheus-client's.
    return Metrics(
        registry=r,
        labels=labels or UsageLabels((), ()),
        requests=counter("keyrelay_translator_requests", "Requests by route, status and provider",
                         ["route", "status", "provider"]),
        latency=histogram("keyrelay_translator_request_seconds", "Request latency (to the last byte for streams)",
                          ["route", "provider"], _LATENCY_BUCKETS),
        first_byte=histogram("keyrelay_translator_upstream_first_byte_seconds",
                             "Time until the upstream answered (headers for streams)", ["provider"],
                             _LATENCY_BUCKETS),
        stream_chunks=counter("keyrelay_translator_stream_chunks", "Upstream stream chunks relayed", ["provider"]),
        upstream_errors=Counter("keyrelay_translator_upstream_errors",
                                "Upstream failures by provider and the status answered",
                                ["provider", "status"], registry=r),
        inflight=inflight("keyrelay_translator_inflight_requests", "Requests in flight"),
        litellm_import=Gauge("keyrelay_translator_litellm_import_seconds",
                             "Measured LiteLLM import time (0 until imported)", registry=r,
                             multiprocess_mode="max"),
        tokens=counter("keyrelay_translator_tokens",
                       "Tokens the upstream reported (or, marked in usage_estimated, estimated) by tenant, "
                       "configured target model and kind (input, output, cache_read, cache_write, reasoning; "
                       "reasoning is part of output)", ["tenant", "model", "kind"]),
        tenant_requests=counter("keyrelay_translator_tenant_requests",
                                "Messages requests by tenant, configured target model and status class",
                                ["tenant", "model", "status_class"]),
        ttft=histogram("keyrelay_translator_time_to_first_token_seconds",
                       "Streams: time from the request's arrival to the first upstream chunk relayed",
                       ["model"], _TTFT_BUCKETS),
        usage_estimated=counter("keyrelay_translator_usage_estimated",
                                "Messages requests whose upstream reported no usage (tokens estimated)", ["model"]),
        budget_usage=Counter("keyrelay_translator_budget_usage_writes",
                             "Usage records for the budget counters in Redis by result (written; dropped: queue "
                             "full or Redis unreachable)", ["result"], registry=r),
    )
