"""The plain-number metrics (`translator.plain_metrics`, one worker) expose exactly what prometheus-client's own
metrics (`--workers N`) expose for the same observations: the /metrics text compared byte for byte, with the
`_created` timestamps (the time each series appeared) set equal first."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from translator.metrics import UsageLabels, build_metrics
from translator.plain_metrics import CounterValue, HistogramValue, PlainCounter, PlainHistogram
from translator.usage import Usage

CREATED = re.compile(rb"^(\S+_created(?:\{[^}]*\})?) \S+$", re.M)

# Each case: observations applied to both kinds of metrics, as (method of Metrics or attribute, arguments).
CASES = {
    "nothing observed": [],
    "one request": [("observe_request", ("messages", "200", "openai", 0.0123))],
    "bucket bounds and beyond": [("observe_request", ("messages", "200", "openai", s))
                                 for s in (0.0, 0.005, 0.0050001, 0.01, 1, 600, 600.5, 1e9)],
    "routes, statuses, providers": [
        ("observe_request", ("messages", "200", "openai", 0.2)),
        ("observe_request", ("count_tokens", "400", "", 0.001)),
        ("observe_request", ("messages", "502", "gemini", 3.3)),
        ("observe_first_byte", ("openai", 0.07)),
        ("observe_first_byte", ("gemini", 61.0)),
        ("observe_stream_chunks", ("openai", 42)),
        ("observe_stream_chunks", ("openai", 0)),
    ],
    "usage": [
        ("observe_usage", ("team-a", "gpt-4.1", 200, Usage(input=5, output=7, cache_read=3, reasoning=2), 0.42)),
        ("observe_usage", ("team-a", "gpt-4.1", 200, Usage(input=1, output=1, estimated=True), None)),
        ("observe_usage", ("intruder", "client-model", 502, None, None)),
        ("observe_usage", (None, "gpt-4.1", 429, None, 120.0)),
        ("observe_usage", ("team-a", "gpt-4.1", 200, Usage(input=10, output=0, cache_write=4), 0.05)),
    ],
    "in flight and the rare ones": [
        ("inflight.inc", ()), ("inflight.inc", ()), ("inflight.dec", ()),
        ("upstream_errors", ("openai", "502")), ("budget_usage", ("written",)),
        ("litellm_import.set", (1.25,)),
    ],
}


def apply(m, steps) -> None:
    for name, args in steps:
        if name in ("upstream_errors", "budget_usage"):
            getattr(m, name).labels(*args).inc()
        elif "." in name:
            attr, method = name.split(".")
            getattr(getattr(m, attr), method)(*args)
        else:
            getattr(m, name)(*args)


def exposition(plain: bool, steps) -> bytes:
    m = build_metrics(UsageLabels(["team-a"], ["gpt-4.1"]), plain=plain)
    apply(m, steps)
    return CREATED.sub(rb"\1 0.0", generate_latest(m.registry))


@pytest.mark.parametrize("steps", list(CASES.values()), ids=list(CASES))
def test_exposition_is_prometheus_clients(steps):
    plain, reference = exposition(True, steps), exposition(False, steps)
    assert plain == reference
    if steps:
        assert b"_created" in plain  # created series compared (with equal times), not absent from both


def test_plain_metrics_are_the_default_in_one_process(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert isinstance(build_metrics().requests, PlainCounter)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    assert not isinstance(build_metrics().requests, PlainCounter)


@pytest.mark.parametrize("env,created", [("", True), ("false", True), ("true", False), ("1", False), ("T", False)])
def test_created_series_follow_prometheus_clients_setting(monkeypatch, env, created):
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", env)
    m = build_metrics(plain=True)
    m.observe_request("messages", "200", "openai", 0.1)
    assert (b"keyrelay_translator_requests_created" in generate_latest(m.registry)) is created


BUCKET_CASES = [  # amount, index of the bucket it counts in (bounds 1, 2, +Inf)
    (-1.0, 0), (0.0, 0), (1.0, 0), (1.5, 1), (2.0, 1), (2.0000001, 2), (math.inf, 2), (math.nan, None),
]


@pytest.mark.parametrize("amount,index", BUCKET_CASES)
def test_histogram_bucket_of_an_amount(amount, index):
    h = HistogramValue((1.0, 2.0, math.inf))
    h.observe(amount)
    assert h.counts == [1.0 if i == index else 0.0 for i in range(3)]


def test_counter_refuses_negative_and_wrong_label_counts():
    with pytest.raises(ValueError):
        CounterValue().inc(-1)
    c = PlainCounter("c", "doc", ["a", "b"], CollectorRegistry())
    with pytest.raises(ValueError):
        c.labels("x")
    assert c.labels("x", "y") is c.labels("x", "y")
    PlainHistogram("h", "doc", ["a"], CollectorRegistry(), (1, 2))  # +Inf appended
