"""Counters, histograms and a gauge of one process kept in plain Python numbers, exposed through
prometheus-client's public custom-collector API (a `Collector` registered in a `CollectorRegistry`).

Why not prometheus-client's own `Counter` / `Histogram` on the request path: every `inc` checks that the metric is
observable and takes a lock, every `observe` does that for the sum and then walks the buckets in Python. The
translator's accounting of a finished request (request counter, latency, first byte, usage by tenant, tokens,
time to first token, requests in flight) cost ~60,000 instructions that way, ~13% of a tiny request. Here an
increment is one attribute add and an observation one `bisect` and two adds, without a lock: every metric of
this module is updated only from the worker's event-loop thread (the request path; nothing in `to_thread` work
touches them), and a scrape reads numbers that each are a single Python object.

The exposition is prometheus-client's for the same observations, sample for sample: names, help, types, label
order, `le` texts, the cumulative buckets, `_count`, `_sum` and the `_created` samples (unless
PROMETHEUS_DISABLE_CREATED_SERIES turns those off, read as prometheus-client reads it). These classes keep
nothing in PROMETHEUS_MULTIPROC_DIR: `metrics.build_metrics` uses them only when that is not set (one worker);
with `--workers N` it builds prometheus-client's own metrics, whose values the multiprocess collector merges.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from typing import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString


def created_series_enabled() -> bool:
    """Whether `_created` samples are exposed: prometheus-client's own rule (environment at start-up)."""
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


class CounterValue:
    """One series of a counter."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramValue:
    """One series of a histogram: observations per bucket (not cumulative) and their sum."""

    __slots__ = ("_bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        if amount == amount:  # NaN counts in no bucket (prometheus-client: `amount <= bound` is never true)
            self.counts[bisect_left(self._bounds, amount)] += 1  # the first bucket whose bound is >= amount


class _Family(Collector):
    """A labelled metric: `labels(*values)` gives the series of those label values (created on first use, kept
    in creation order as prometheus-client keeps them)."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry,
                 created: bool | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.created = created_series_enabled() if created is None else created
        self._series: dict[tuple[str, ...], object] = {}
        registry.register(self)

    def labels(self, *values: str):  # noqa: ANN201 - the series type of the subclass
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError("Incorrect label count")
            series = self._series[values] = self._new()
        return series

    def _new(self) -> object:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def _metric(self) -> Metric:
        return Metric(self.name, self.documentation, self.kind)

    def describe(self) -> Iterable[Metric]:
        return [self._metric()]


class PlainCounter(_Family):
    kind = "counter"

    def _new(self) -> CounterValue:
        return CounterValue()

    def collect(self) -> Iterable[Metric]:
        m = self._metric()
        for values, series in list(self._series.items()):
            labels = dict(zip(self.labelnames, values))
            m.add_sample(self.name + "_total", labels, series.value)  # type: ignore[attr-defined]
            if self.created:
                m.add_sample(self.name + "_created", labels, series.created)  # type: ignore[attr-defined]
        return [m]


class PlainHistogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry,
                 buckets: Sequence[float], created: bool | None = None) -> None:
        bounds = tuple(float(b) for b in buckets)
        if bounds[-1] != INF:
            bounds += (INF,)
        self.bounds = bounds
        self._le = tuple(floatToGoString(b) for b in bounds)
        super().__init__(name, documentation, labelnames, registry, created)

    def _new(self) -> HistogramValue:
        return HistogramValue(self.bounds)

    def collect(self) -> Iterable[Metric]:
        m = self._metric()
        name = self.name
        for values, series in list(self._series.items()):
            labels = dict(zip(self.labelnames, values))
            acc = 0.0
            for le, n in zip(self._le, series.counts):  # type: ignore[attr-defined]
                acc += n
                m.add_sample(name + "_bucket", {**labels, "le": le}, acc)
            m.add_sample(name + "_count", labels, acc)
            if self.bounds[0] >= 0:
                m.add_sample(name + "_sum", labels, series.sum)  # type: ignore[attr-defined]
            if self.created:
                m.add_sample(name + "_created", labels, series.created)  # type: ignore[attr-defined]
        return [m]


class PlainGauge(Collector):
    """A gauge without labels."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def _metric(self) -> Metric:
        return Metric(self.name, self.documentation, "gauge")

    def describe(self) -> Iterable[Metric]:
        return [self._metric()]

    def collect(self) -> Iterable[Metric]:
        m = self._metric()
        m.add_sample(self.name, {}, self.value)
        return [m]
