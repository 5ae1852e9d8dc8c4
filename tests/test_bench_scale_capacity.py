"""The scale section's capacity and target verdicts (bench/scale.py) and their report line (bench/report.py):
pure functions of one run's figures, table-driven."""

from __future__ import annotations

import pytest

from bench import report, scale

CAPS = {"translator": 1, "envoy": 2, "ext_authz": 1, "upstream": 1, "client": 2}


def run(n: int, *, translator: float, envoy: float, upstream: float = 15.0, client: float = 5.0,
        completed: int | None = None, p99: float | None = 10.0, rss: float = 200.0) -> dict:
    return {"n": n, "completed": n if completed is None else completed, "delay_ms": {"p99": p99},
            "rss_mb": {"translator": rss},
            "us_per_chunk": {"translator": translator, "envoy": envoy, "ext_authz": 1.0, "upstream": upstream,
                             "client": client}}


@pytest.mark.parametrize("r, cores, need, over, fits", [
    # N = 2,000 at 50 ms: 40,000 chunks/s; 63 us -> 2.52 cores of a one-core translator.
    (run(2000, translator=63, envoy=36, upstream=14, client=0), 2,
     {"translator": 2.52, "envoy": 1.44, "ext_authz": 0.04, "upstream": 0.56}, {"translator": 2.52}, False),
    # N = 200: 4,000 chunks/s, everything well inside its cap and the machine.
    (run(200, translator=60, envoy=30), 2, {"translator": 0.24, "envoy": 0.12, "client": 0.02}, {}, True),
    # Inside every cap, but not inside the machine's cores.
    (run(600, translator=70, envoy=60, upstream=20, client=20), 2, {"translator": 0.84, "envoy": 0.72}, {}, False),
    # Envoy over its --concurrency.
    (run(1000, translator=10, envoy=120), 8, {"envoy": 2.4}, {"envoy": 1.2}, False),
])
def test_capacity(r: dict, cores: int, need: dict, over: dict, fits: bool) -> None:
    cap = scale.capacity(r, interval_ms=50, caps=CAPS, cores=cores)
    assert cap["chunks_per_s"] == r["n"] * 20
    for name, cores_needed in need.items():
        assert cap["cores_needed"][name] == pytest.approx(cores_needed)
    assert cap["over_cap"] == over
    assert cap["fits"] is fits
    assert cap["keyrelay_cores"] == pytest.approx(sum(cap["cores_needed"][n] for n in ("translator", "envoy",
                                                                                       "ext_authz")), abs=0.011)
    line = report.capacity_line(cap, {})
    assert ("does not fit" in line) is not fits
    assert f"{r['n'] * 20:,} chunks/s" in line
    for name in over:
        assert f"{over[name]:.1f}x over" in line


@pytest.mark.parametrize("r, missed", [
    (run(2000, translator=1, envoy=1), []),
    (run(2000, translator=1, envoy=1, p99=25.0, rss=400.0), []),
    (run(2000, translator=1, envoy=1, p99=25.1), ["added p99"]),
    (run(2000, translator=1, envoy=1, p99=None), ["added p99"]),
    (run(2000, translator=1, envoy=1, completed=1999), ["1 streams not completed"]),
    (run(2000, translator=1, envoy=1, rss=401.0, p99=160.0), ["added p99", "translator RSS 401 MB"]),
])
def test_meets_targets(r: dict, missed: list[str]) -> None:
    got = scale.meets_targets(r)
    assert len(got) == len(missed)
    for text, want in zip(got, missed):
        assert text.startswith(want)
