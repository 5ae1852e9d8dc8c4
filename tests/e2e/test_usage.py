"""Usage per person and per team, end to end: real Envoy (tracing on), real ext_authz, real translator and a
scripted upstream that reports usage, with a real OTLP receiver.

- token metrics and the translator's log line equal what the upstream reported, streaming and not, on every
  backend (OpenAI-compatible, Anthropic native, LiteLLM with Gemini's wire format);
- the Envoy access-log line, ext_authz's decision line and the translator's line of one request share its
  request id, key id, tenant and credential;
- spans of Envoy, ext_authz and the translator arrive with the right parentage, and the upstream request is a
  child of the translator's span;
- the usage metrics' series stay bounded when clients send 1,000 model names, unknown tenants and forged
  tenant headers;
- the dashboard's queries match the labels of the metrics really exported after this traffic.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import dashboard
from tests.support.otlp import OtlpReceiver
from tests.support.upstream import (Reply, ScriptedUpstream, anthropic_stream, gemini_response, gemini_stream,
                                    openai_chunk, openai_completion, openai_error, openai_stream,
                                    openai_usage_chunk)
from translator.usage import Usage

from .conftest import (Envoy, json_lines, key_id, marker, start_envoy, start_ext_authz, start_translator,
                       write_policy)

pytestmark = pytest.mark.e2e

KEY_TEAM = "sk-e2e-usage-team-a-0001"      # allowlisted, tenant team-a (a tenant the translator lists)
KEY_UNLISTED = "sk-e2e-usage-unlisted-0002"  # allowlisted, tenant team-z (not in the translator's list)
USER = [{"role": "user", "content": "hello"}]
OTEL = {"OTEL_BSP_SCHEDULE_DELAY": "100"}

ROUTES = """\
version: 1
rules:
  - {match: e2e-openai, target: openai/gpt-e2e}
  - {match: e2e-anthropic, target: anthropic/claude-e2e}
  - {match: e2e-gemini, target: gemini/gemini-e2e}
"""


class UsageStack:
    def __init__(self, envoy: Envoy, authz, translator, upstream: ScriptedUpstream, otlp: OtlpReceiver) -> None:
        self.envoy, self.authz, self.translator, self.upstream, self.otlp = envoy, authz, translator, upstream, otlp

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = dashboard.fetch_metrics(f"http://127.0.0.1:{self.translator.port}/metrics")
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def translator_line(self, request_id: str) -> dict[str, Any]:
        """The translator's JSON request line of `request_id` (its log is flushed every 0.25 s)."""
        found = json_lines(self.translator, "request", request_id)
        assert len(found) == 1, (request_id, self.translator.lines[-5:])
        return found[0]


@pytest.fixture(scope="module")
def usage_stack(e2e_tmp: Path) -> Iterator[UsageStack]:
    tmp = e2e_tmp / "usage"
    tmp.mkdir(exist_ok=True)
    policy = write_policy(tmp / "policy.yaml", allowlist=[
        {"sha256": hashlib.sha256(KEY_TEAM.encode()).hexdigest(), "tenant": "team-a"},
        {"sha256": hashlib.sha256(KEY_UNLISTED.encode()).hexdigest(), "tenant": "team-z"}],
        decision_log={"mode": "all"})  # ext_authz writes one line per decision, with the request id
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES)
    with OtlpReceiver() as otlp, ScriptedUpstream() as upstream:
        otel = dict(OTEL, OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint)
        translator = start_translator(upstream.url, TRANSLATOR_ROUTES=str(routes), TRANSLATOR_TENANTS="team-a",
                                      GEMINI_BASE_URL=upstream.url, GEMINI_API_KEY="unused-static", **otel)
        authz = start_ext_authz(policy, name="ext_authz_usage", REQUIRE_PASSTHROUGH_KEY="true", **otel)
        envoy = start_envoy("envoy_usage", ext_authz_port=authz.port, translator_port=translator.port, tmp=tmp,
                            otlp_port=otlp.port)
        try:
            yield UsageStack(envoy, authz, translator, upstream, otlp)
        finally:
            envoy.stop()
            authz.stop()
            translator.stop()


def _anthropic_message(usage: dict) -> Reply:
    return Reply(json_body={"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-e2e",
                            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                            "stop_sequence": None, "usage": usage})


def _anthropic_events(start_usage: dict, delta_usage: dict) -> Reply:
    return anthropic_stream([
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-e2e", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hi"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": delta_usage}),
        ("message_stop", {"type": "message_stop"}),
    ])


def _openai_stream(usage: dict) -> Reply:
    return openai_stream([openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"content": "hi"}),
                          openai_chunk({}, finish_reason="stop"), openai_usage_chunk(**usage)])


# name, requested model, target model, backend, stream, upstream reply, expected usage
CASES = [
    ("openai", "e2e-openai", "gpt-e2e", "openai", False,
     openai_completion("hi", usage={"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                                    "prompt_tokens_details": {"cached_tokens": 100},
                                    "completion_tokens_details": {"reasoning_tokens": 12}}),
     Usage(input=20, output=30, cache_read=100, reasoning=12)),
    ("openai-stream", "e2e-openai", "gpt-e2e", "openai", True,
     _openai_stream({"prompt_tokens": 57, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 7}}),
     Usage(input=50, output=9, cache_read=7)),
    ("anthropic", "e2e-anthropic", "claude-e2e", "anthropic", False,
     _anthropic_message({"input_tokens": 21, "cache_creation_input_tokens": 248, "cache_read_input_tokens": 1800,
                         "output_tokens": 393}),
     Usage(input=21, output=393, cache_read=1800, cache_write=248)),
    ("anthropic-stream", "e2e-anthropic", "claude-e2e", "anthropic", True,
     _anthropic_events({"input_tokens": 25, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5,
                        "output_tokens": 1}, {"output_tokens": 15}),
     Usage(input=25, output=15, cache_read=5, cache_write=3)),
    ("litellm-gemini", "e2e-gemini", "gemini/gemini-e2e", "litellm", False,
     gemini_response("hi", prompt_tokens=40, output_tokens=6), Usage(input=40, output=6)),
    ("litellm-gemini-stream", "e2e-gemini", "gemini/gemini-e2e", "litellm", True,
     gemini_stream(["h", "i"], prompt_tokens=33, output_tokens=5), Usage(input=33, output=5)),
]


def _tokens(metrics: dict, tenant: str, model: str) -> dict[str, float]:
    out = {}
    for (name, labels), value in metrics.items():
        d = dict(labels)
        if name == "keyrelay_translator_tokens_total" and d["tenant"] == tenant and d["model"] == model:
            out[d["kind"]] = value
    return out


@pytest.mark.parametrize("requested,target,backend,stream,reply,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_metrics_and_log_line_equal_the_upstream_usage(usage_stack, requested, target, backend, stream, reply,
                                                       expected):
    s = usage_stack
    s.upstream.reset().push(reply)
    before = s.metrics()
    ua = marker()
    client = s.envoy.client(KEY_TEAM, default_headers={"user-agent": ua})
    if stream:
        with client.messages.stream(model=requested, max_tokens=50, messages=USER) as st:
            msg = st.get_final_message()
    else:
        msg = client.messages.create(model=requested, max_tokens=50, messages=USER)
    # What the client saw is the same usage (Anthropic's shape).
    assert msg.usage.input_tokens == expected.input and msg.usage.output_tokens == expected.output
    assert (msg.usage.cache_read_input_tokens or 0) == expected.cache_read
    assert (msg.usage.cache_creation_input_tokens or 0) == expected.cache_write

    access = s.envoy.log_entry(lambda e: e.get("user_agent") == ua)
    line = s.translator_line(access["request_id"])
    assert line["tokens"] == expected.as_dict()
    # Every backend (LiteLLM's too) sends the translator span's W3C context upstream.
    assert s.upstream.requests[-1].headers["traceparent"].startswith("00-")
    assert {k: line[k] for k in ("route", "status", "requested_model", "model", "backend", "stream", "tenant",
                                 "credential", "key_id")} == {
        "route": "messages", "status": 200, "requested_model": requested, "model": target, "backend": backend,
        "stream": stream, "tenant": "team-a", "credential": "passthrough", "key_id": key_id(KEY_TEAM)}
    # The same request in Envoy's access log and ext_authz's decision log: same id, fingerprint, tenant and
    # credential.
    assert (access["key_id"], access["tenant"], access["credential"], access["status"]) == (
        line["key_id"], line["tenant"], line["credential"], 200)
    [decision] = json_lines(s.authz, "decision", access["request_id"])
    assert (decision["result"], decision["key_id"], decision["tenant"], decision["credential"], decision["route"]) \
        == ("allow", line["key_id"], line["tenant"], line["credential"], line["route"])
    assert line["duration_ms"] > 0 and (line["ttft_ms"] is not None) == stream
    assert KEY_TEAM not in json.dumps(line)

    after = s.metrics()
    gained = {k: v - _tokens(before, "team-a", target).get(k, 0.0)
              for k, v in _tokens(after, "team-a", target).items()}
    assert {k: v for k, v in gained.items() if v} == {k: float(n) for k, n in expected.counts() if n}
    req = ("keyrelay_translator_tenant_requests_total",
           (("model", target), ("status_class", "2xx"), ("tenant", "team-a")))
    assert after[req] - before.get(req, 0.0) == 1.0
    ttft = ("keyrelay_translator_time_to_first_token_seconds_count", (("model", target),))
    assert after.get(ttft, 0.0) - before.get(ttft, 0.0) == (1.0 if stream else 0.0)


def test_an_upstream_without_usage_is_estimated_and_marked(usage_stack):
    s = usage_stack
    s.upstream.reset().push(openai_stream([openai_chunk({"content": "x" * 40}),
                                           openai_chunk({}, finish_reason="stop")]))
    before = s.metrics()
    ua = marker()
    with s.envoy.client(KEY_TEAM, default_headers={"user-agent": ua}).messages.stream(
            model="e2e-openai", max_tokens=50, messages=USER) as st:
        st.get_final_message()
    line = s.translator_line(s.envoy.log_entry(lambda e: e.get("user_agent") == ua)["request_id"])
    assert line["tokens"]["estimated"] is True and line["tokens"]["output"] == 10 and line["tokens"]["input"] > 0
    key = ("keyrelay_translator_usage_estimated_total", (("model", "gpt-e2e"),))
    assert s.metrics()[key] - before.get(key, 0.0) == 1.0


def test_spans_cross_envoy_ext_authz_translator_and_upstream(usage_stack):
    s = usage_stack
    s.upstream.reset().push(_openai_stream({"prompt_tokens": 12, "completion_tokens": 3}))
    ua = marker()
    with s.envoy.client(KEY_TEAM, default_headers={"user-agent": ua}).messages.stream(
            model="e2e-openai", max_tokens=50, messages=USER) as st:
        st.get_final_message()
    request_id = s.envoy.log_entry(lambda e: e.get("user_agent") == ua)["request_id"]
    # The upstream request carries the translator span's context.
    _, trace_id, upstream_parent, _ = s.upstream.requests[-1].headers["traceparent"].split("-")

    def complete(spans) -> bool:
        mine = [x for x in spans if x.trace_id == trace_id]
        return {x.service for x in mine} >= {"keyrelay-envoy", "keyrelay-ext-authz", "keyrelay-translator"} and \
            len([x for x in mine if x.service == "keyrelay-envoy"]) >= 2

    s.otlp.wait_for(complete, timeout=30)
    spans = s.otlp.trace(trace_id)
    by_service: dict[str, list] = {}
    for x in spans:
        by_service.setdefault(x.service, []).append(x)
    (ingress,) = [x for x in by_service["keyrelay-envoy"] if x.kind == 2]  # SERVER: the request at the edge
    assert ingress.is_root
    (egress,) = [x for x in by_service["keyrelay-envoy"] if x.kind == 3]  # CLIENT: Envoy's Check call
    assert egress.parent_span_id == ingress.span_id
    (check,) = by_service["keyrelay-ext-authz"]
    assert check.parent_span_id == egress.span_id and check.kind == 2
    assert check.attributes["keyrelay.decision"] == "allow" and check.attributes["keyrelay.request_id"] == request_id
    (chat,) = by_service["keyrelay-translator"]
    assert chat.parent_span_id == ingress.span_id and chat.kind == 2
    assert chat.span_id == upstream_parent  # the upstream call is the translator span's child
    assert chat.name == "chat gpt-e2e"
    assert {k: chat.attributes[k] for k in ("gen_ai.operation.name", "gen_ai.request.model", "gen_ai.provider.name",
                                            "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                                            "gen_ai.response.finish_reasons", "keyrelay.requested_model",
                                            "keyrelay.tenant", "keyrelay.request_id")} == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-e2e", "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 3, "gen_ai.response.finish_reasons": ["stop"],
        "keyrelay.requested_model": "e2e-openai", "keyrelay.tenant": "team-a", "keyrelay.request_id": request_id}
    text = repr(spans)
    assert KEY_TEAM not in text and "hello" not in text and "hi" not in json.dumps(chat.attributes)


def _usage_series(metrics: dict) -> set[tuple]:
    names = ("keyrelay_translator_tokens_total", "keyrelay_translator_tenant_requests_total",
             "keyrelay_translator_time_to_first_token_seconds_count", "keyrelay_translator_usage_estimated_total")
    return {(n, labels) for (n, labels) in metrics if n in names}


def test_series_stay_bounded_under_client_chosen_models_and_tenants(usage_stack):
    s = usage_stack
    s.upstream.reset()  # every request: the default OpenAI completion (11 prompt, 7 completion tokens)
    before = _usage_series(s.metrics())
    conn = http.client.HTTPConnection("127.0.0.1", s.envoy.port, timeout=30)
    try:
        for i in range(1000):
            key = KEY_UNLISTED if i % 2 else KEY_TEAM
            body = json.dumps({"model": f"client-model-{i}", "max_tokens": 5, "messages": USER})
            conn.request("POST", "/v1/messages", body=body, headers={
                "x-api-key": key, "content-type": "application/json", "anthropic-version": "2023-06-01",
                "x-authz-tenant": f"forged-{i}"})  # removed by Envoy and ext_authz: never reaches the translator
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
    finally:
        conn.close()
    after = _usage_series(s.metrics())
    new = after - before
    tenants = {dict(labels)["tenant"] for _, labels in new if "tenant" in dict(labels)}
    models = {dict(labels)["model"] for _, labels in new}
    assert tenants <= {"team-a", "other"} and models == {"other"}
    # tokens: 2 tenants x 2 kinds; requests: 2 tenants x 1 status class.
    assert len(new) <= 6, sorted(new)
    assert len(s.upstream.requests) == 1000


def test_dashboard_labels_match_what_is_exported(usage_stack):
    """After the traffic above every usage series exists, so label names can be checked too."""
    s = usage_stack
    s.upstream.reset().push(openai_error(500, "upstream broke"))  # an upstream error series
    with pytest.raises(anthropic.InternalServerError):
        s.envoy.client(KEY_TEAM).messages.create(model="e2e-openai", max_tokens=5, messages=USER)
    exported = dashboard.Exported()
    exported.add(dashboard.fetch_metrics(f"http://127.0.0.1:{usage_stack.translator.port}/metrics"))
    exported.add(dashboard.fetch_metrics(f"http://127.0.0.1:{usage_stack.authz.http_port}/metrics"))
    # A denial, so that ext_authz's decision series carries a deny reason.
    conn = http.client.HTTPConnection("127.0.0.1", usage_stack.envoy.port, timeout=10)
    conn.request("POST", "/v1/messages", body=b"{}", headers={"content-type": "application/json"})
    assert conn.getresponse().status == 401
    conn.close()
    exported.add(dashboard.fetch_metrics(f"http://127.0.0.1:{usage_stack.authz.http_port}/metrics"))
    assert dashboard.problems(dashboard.load(), exported, check_labels=True) == []
