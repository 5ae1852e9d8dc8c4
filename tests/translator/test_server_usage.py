"""Usage at the finish point, in-process against the scripted upstream: what a failed request, a broken stream and
a request without a tenant record (the end-to-end proof over every backend is tests/e2e/test_usage.py)."""

from __future__ import annotations

import logging

import anthropic
import httpx
import pytest

from tests.support.upstream import anthropic_stream, openai_completion, openai_error
from translator.usage import Usage

KEY = "sk-user-usage-0001"
USER = [{"role": "user", "content": "hello"}]


def request_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "keyrelay.translator" and r.getMessage() == "request"]


def sample(srv, name: str, **labels: str) -> float:
    return srv.state.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def openai_srv(make_translator, upstream):
    return make_translator(OPENAI_BASE_URL=upstream.url + "/v1", TRANSLATOR_TENANTS="team-a",
                           BIG_MODEL="gpt-big")


def test_a_failed_request_counts_a_request_and_no_tokens(openai_srv, upstream, caplog):
    upstream.push(openai_error(500, "broken"))
    with caplog.at_level(logging.INFO, logger="keyrelay.translator"):
        with pytest.raises(anthropic.APIStatusError):
            openai_srv.client(KEY, default_headers={"x-authz-tenant": "team-a", "x-request-id": "rid-f\x9b1"}
                              ).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=USER)
    (line,) = request_lines(caplog)
    assert line.tokens is None and line.status >= 500 and line.error == "api_error"
    # The SDK sends the header as UTF-8 (C2 9B), read as latin-1 ("\xc2\x9b"): the C1 control is made visible.
    assert line.request_id == "rid-f\xc2\\u009b1"
    assert sample(openai_srv, "keyrelay_translator_tenant_requests_total", tenant="team-a", model="gpt-big",
                  status_class="5xx") == 1.0
    assert sample(openai_srv, "keyrelay_translator_tokens_total", tenant="team-a", model="gpt-big",
                  kind="input") == 0.0


def test_no_tenant_and_an_unlisted_tenant(openai_srv, upstream, caplog):
    upstream.push(openai_completion("a"), openai_completion("b"))
    with caplog.at_level(logging.INFO, logger="keyrelay.translator"):
        openai_srv.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=USER)
        openai_srv.client(KEY, default_headers={"x-authz-tenant": "team-q"}).messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=USER)
    lines = request_lines(caplog)
    assert [line.tenant for line in lines] == [None, "team-q"]  # the line keeps the real name
    assert [line.tokens for line in lines] == [Usage(input=11, output=7).as_dict()] * 2
    for tenant in ("none", "other"):
        assert sample(openai_srv, "keyrelay_translator_tokens_total", tenant=tenant, model="gpt-big",
                      kind="output") == 7.0


def test_a_broken_anthropic_stream_keeps_what_message_start_reported(make_translator, upstream, caplog):
    srv = make_translator(PREFERRED_PROVIDER="anthropic", ANTHROPIC_BASE_URL=upstream.url)
    events = [("message_start", {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": "x", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 30, "cache_read_input_tokens": 4, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "partial"}})]
    upstream.push(anthropic_stream(events + [("ping", {"type": "ping"})] * 3, drop_after_frames=3))
    with caplog.at_level(logging.INFO, logger="keyrelay.translator"):
        with httpx.stream("POST", f"{srv.url}/v1/messages", headers={"x-api-key": KEY},
                          json={"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True,
                                "messages": USER}) as r:
            body = b"".join(r.iter_bytes())
    assert b"event: error" in body
    (line,) = request_lines(caplog)
    assert line.stream is True and line.error is not None and line.ttft_ms is not None
    assert line.tokens == Usage(input=30, output=1, cache_read=4).as_dict()
