"""Tracing in ext_authz, over real gRPC into a real OTLP receiver: one span per Check, continuing the W3C context
in the Check's gRPC metadata (where Envoy puts it), with both Check handlers; no span and no exporter without an
endpoint; never a key in a span."""

from __future__ import annotations

from pathlib import Path

import pytest

from ext_authz.decide import key_digest
from tests.support.otlp import OtlpReceiver

from .helpers import check_request, running_service

KEY = "sk-trace-test-0123456789"
REVOKED = "sk-trace-revoked-012345"
POLICY = f"""\
version: 1
revoked:
  - sha256: {key_digest(REVOKED)}
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def otlp():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module", params=["direct", "pool"])
def traced(request, otlp, tmp_path_factory):
    path: Path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with running_service(path, env=env, extra_args=["--check-handler", request.param]) as svc:
        yield svc


CASES = [
    # headers, route, expected attributes
    ({"x-api-key": KEY, "x-request-id": "rid-allow"}, "messages",
     {"keyrelay.decision": "allow", "keyrelay.route": "messages", "keyrelay.request_id": "rid-allow"}),
    ({"x-api-key": REVOKED, "x-request-id": "rid-deny"}, "messages",
     {"keyrelay.decision": "deny", "keyrelay.reason": "revoked", "http.response.status_code": 403}),
    ({"x-request-id": "rid-nokey"}, "count_tokens",
     {"keyrelay.decision": "deny", "keyrelay.reason": "missing_key", "http.response.status_code": 401,
      "keyrelay.route": "count_tokens"}),
]


@pytest.mark.parametrize("headers,route,expected", CASES)
@pytest.mark.parametrize("raw", [False, True], ids=["headers", "header_map"])
def test_one_span_per_check_continues_the_metadata_context(traced, otlp, headers, route, expected, raw):
    otlp.reset()
    span_id = PARENT[:-2] + ("01" if raw else "02")
    md = (("traceparent", f"00-{TRACE_ID}-{span_id}-01"),)
    traced.stub.Check(check_request(headers, route=route, raw=raw), metadata=md, timeout=10)
    spans = otlp.wait_for(lambda s: any(x.trace_id == TRACE_ID for x in s))
    (span,) = [s for s in spans if s.trace_id == TRACE_ID]
    assert span.service == "keyrelay-ext-authz"
    assert span.name == "envoy.service.auth.v3.Authorization/Check"
    assert span.parent_span_id == span_id and span.kind == 2  # SERVER, child of the caller's span
    assert span.attributes["rpc.system"] == "grpc" and span.attributes["rpc.method"] == "Check"
    for k, v in expected.items():
        assert span.attributes[k] == v, k
    text = repr(span)
    assert KEY not in text and REVOKED not in text


def test_a_check_without_context_starts_a_trace(traced, otlp):
    otlp.reset()
    traced.check({"x-api-key": KEY, "x-request-id": "rid-root"}, route="messages")
    spans = otlp.wait_for(lambda s: any(x.attributes.get("keyrelay.request_id") == "rid-root" for x in s))
    (span,) = [s for s in spans if s.attributes.get("keyrelay.request_id") == "rid-root"]
    assert span.is_root


def test_no_endpoint_no_spans(tmp_path):
    with OtlpReceiver() as receiver:
        path = tmp_path / "policy.yaml"
        path.write_text(POLICY)
        # The receiver exists but nothing points ext_authz at it: tracing stays off, no exporter runs.
        with running_service(path, env={"OTEL_SERVICE_NAME": "x"}) as svc:
            svc.check({"x-api-key": KEY}, route="messages")
            svc.proc.stop()
        assert receiver.exports == 0


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "http://c:4317"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317"},
     "http://t:4317"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, None),
])
def test_endpoint_from_env(env, expected):
    import keyrelay_tracing

    assert keyrelay_tracing.endpoint_from_env(env) == expected
    assert keyrelay_tracing.from_env("x", env).enabled is (expected is not None)
