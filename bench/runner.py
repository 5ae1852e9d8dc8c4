"""Interleaved measurement: every point of a comparison is run once per repetition, in alternating order
(ABC, CBA, ABC, ...), so slow drift of a shared machine hits all of them alike; each figure is the median over
repetitions and each ratio is the median of the per-repetition ratios (A and B from the same repetition)."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from bench import wrk
from bench.procs import CpuMeter, Proc


@dataclass
class Point:
    """One thing measured: a request shape against one endpoint, at one concurrency, with the processes whose
    CPU time is charged to it."""

    key: str
    request: wrk.Request
    connections: int
    procs: dict[str, Proc] = field(default_factory=dict)
    # A slow point (the LiteLLM proxy's streams) runs longer and gets more time to finish aborted requests, so
    # that it completes enough requests for a figure and its CPU is not charged to the next point.
    min_duration_s: float = 0.0
    settle_s: float | None = None


@dataclass
class Sample:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: dict[str, float]

    def cpu_per_1k(self) -> dict[str, float]:
        return {n: (c / self.requests * 1000 if self.requests else float("nan")) for n, c in self.cpu_s.items()}


@dataclass
class Settings:
    runs: int
    duration_s: float
    warmup_s: float
    wrk_cpus: str | None = None
    verbose: bool = True
    settle_s: float = 0.25


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_interleaved(points: list[Point], settings: Settings) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {p.key: [] for p in points}
    if settings.warmup_s > 0:
        for p in points:
            wrk.run(p.request, connections=p.connections, duration_s=settings.warmup_s, cpus=settings.wrk_cpus)
    for rep in range(settings.runs):
        order = points if rep % 2 == 0 else list(reversed(points))
        for p in order:
            meter = CpuMeter(p.procs)
            meter.start()
            res = wrk.run(p.request, connections=p.connections, duration_s=max(settings.duration_s,
                                                                               p.min_duration_s),
                          cpus=settings.wrk_cpus)
            # wrk closes its connections mid-request when the time is up; let the processes finish with those
            # (their CPU belongs to this point, not to the next one).
            time.sleep(settings.settle_s if p.settle_s is None else p.settle_s)
            cpu = meter.stop()
            s = Sample(rps=res.rps, requests=res.requests, p50_ms=res.latency_us["p50"] / 1000,
                       p99_ms=res.latency_us["p99"] / 1000, errors=res.error_count, cpu_s=cpu)
            out[p.key].append(s)
            if settings.verbose:
                err = f"  ERRORS {res.errors}" if res.error_count else ""
                log(f"  run {rep + 1}/{settings.runs} {p.key:<34} {s.rps:>9.0f} req/s  p50 {s.p50_ms:7.2f} ms"
                    f"  p99 {s.p99_ms:7.2f} ms{err}")
    return out


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # drop NaN
    return statistics.median(xs) if xs else float("nan")


def summarize(samples: list[Sample]) -> dict:
    names = samples[0].cpu_s.keys() if samples else []
    return {
        "rps": median([s.rps for s in samples]),
        "p50_ms": median([s.p50_ms for s in samples]),
        "p99_ms": median([s.p99_ms for s in samples]),
        "errors": sum(s.errors for s in samples),
        "requests": sum(s.requests for s in samples),
        "cpu_s_per_1k": {n: median([s.cpu_per_1k()[n] for s in samples]) for n in names},
        "runs": [{"rps": round(s.rps, 1), "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "errors": s.errors,
                  "cpu_s": {k: round(v, 4) for k, v in s.cpu_s.items()}} for s in samples],
    }


def paired_ratio(a: list[Sample], b: list[Sample], metric: Callable[[Sample], float],
                 metric_a: Callable[[Sample], float] | None = None) -> float:
    """Median over repetitions of metric(b_i) / metric_a(a_i) (metric_a defaults to metric)."""
    metric_a = metric_a or metric
    return median([metric(y) / metric_a(x) for x, y in zip(a, b) if metric_a(x)])


def cpu_per_request(proc: str) -> Callable[[Sample], float]:
    """CPU seconds of `proc` per request of a sample (NaN when it completed none)."""
    return lambda s: s.cpu_s[proc] / s.requests if s.requests else float("nan")


def paired_diff(a: list[Sample], b: list[Sample], metric: Callable[[Sample], float]) -> float:
    """Median over repetitions of metric(b_i) - metric(a_i)."""
    return median([metric(y) - metric(x) for x, y in zip(a, b)])
