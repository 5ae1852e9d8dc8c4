"""The real translator (uvicorn on a loopback port) in front of a scripted OpenAI-compatible upstream, with the
official anthropic SDK as client (raw HTTP only for malformed input)."""

from __future__ import annotations

import json
import socket
import time

import anthropic
import httpx
import pytest

from tests.support.upstream import (
    Reply,
    ScriptedUpstream,
    openai_chunk,
    openai_completion,
    openai_error,
    openai_stream,
    openai_stream_text,
    openai_stream_tool_call,
    openai_tool_call,
    openai_usage_chunk,
)

KEY = "sk-user-test-key-0001"
USER = [{"role": "user", "content": "hello"}]


# ------------------------------------------------------------------ non-streaming, credentials


def test_direct_x_api_key_is_forwarded(translator, upstream):
    """Claude Code with ANTHROPIC_API_KEY (and older SDKs) send the key as x-api-key."""
    upstream.push(openai_completion("hi"))
    r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER})
    assert r.status_code == 200
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert "x-api-key" not in upstream.requests[-1].headers


def test_non_streaming_text_uses_callers_key(translator, upstream):
    upstream.push(openai_completion("hi there"))
    msg = translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER)
    assert msg.content[0].text == "hi there"
    assert msg.model == "claude-sonnet-4-5"  # the response names the model the client asked for
    assert msg.id.startswith("msg_") and msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 7)
    rec = upstream.requests[-1]
    assert rec.path == "/v1/chat/completions"
    assert rec.api_key == KEY
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.body["model"] == "gpt-4.1"  # sonnet -> BIG_MODEL default
    assert rec.body["messages"] == [{"role": "user", "content": "hello"}]
    assert rec.body["max_tokens"] == 100


def test_repeated_tool_definitions_reach_the_upstream_unchanged(translator, upstream):
    """Claude Code's request sent again and again (its tool definitions then come from translator.repeated_tools),
    with a request with other tools in between: the upstream gets what it got the first time."""
    from pathlib import Path

    cc = json.loads((Path(__file__).parent / "fixtures" / "claude_code_request.json").read_text())
    cc["stream"] = False
    other = {**cc, "tools": cc["tools"][:3]}
    seen = []
    for body in (cc, cc, other, cc, cc):
        upstream.push(openai_completion("ok"))
        r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY}, content=json.dumps(body))
        assert r.status_code == 200 and r.json()["content"][0]["text"] == "ok"
        seen.append(upstream.requests[-1].body)
    assert seen[0] == seen[1] == seen[3] == seen[4]
    assert len(seen[0]["tools"]) == len(cc["tools"]) and seen[2]["tools"] == seen[0]["tools"][:3]


def test_header_contract_bearer_credential_wins(translator, upstream):
    """After Envoy + ext_authz the translator sees Authorization: Bearer (and no x-api-key)."""
    upstream.push(openai_completion("ok"), openai_completion("ok"))
    client = anthropic.Anthropic(base_url=translator.url, auth_token="sk-from-envoy-0002", api_key=None,
                                 max_retries=0, default_headers={"x-authz-key-id": "abcd1234abcd1234"})
    client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert upstream.requests[-1].api_key == "sk-from-envoy-0002"
    assert upstream.requests[-1].body["model"] == "gpt-4.1-mini"  # haiku -> SMALL_MODEL default
    # Both headers (a key helper sends both): the bearer credential is the one forwarded.
    both = anthropic.Anthropic(base_url=translator.url, api_key="sk-x-api-key-0003", max_retries=0,
                               default_headers={"authorization": "Bearer sk-bearer-0004"})
    both.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert upstream.requests[-1].api_key == "sk-bearer-0004"


def test_static_key_fallback_and_401(upstream, make_translator):
    with_static = make_translator(OPENAI_BASE_URL=upstream.url + "/v1", OPENAI_API_KEY="sk-static-key-0005")
    upstream.push(openai_completion("ok"))
    raw = httpx.post(f"{with_static.url}/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 5,
                                                             "messages": USER})
    assert raw.status_code == 200
    assert upstream.requests[-1].api_key == "sk-static-key-0005"

    without = make_translator(OPENAI_BASE_URL=upstream.url + "/v1")
    n = len(upstream.requests)
    # The SDK refuses to send without a credential: raw HTTP for the no-credential request.
    r = httpx.post(f"{without.url}/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 5,
                                                       "messages": USER})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert len(upstream.requests) == n  # nothing went upstream


def test_x_api_key_ignored_when_disabled(upstream, make_translator):
    srv = make_translator("--accept-x-api-key", "false", OPENAI_BASE_URL=upstream.url + "/v1")
    r = httpx.post(f"{srv.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert not upstream.requests


def test_query_string_ignored_and_tool_call_round_trip(translator, upstream):
    upstream.push(openai_completion(None, finish_reason="tool_calls",
                                    tool_calls=[openai_tool_call("call_9", "Read", {"path": "/tmp/x"})]))
    r = httpx.post(f"{translator.url}/v1/messages?beta=true", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": USER,
                         "tools": [{"name": "Read", "description": "read a file",
                                    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stop_reason"] == "tool_use"
    assert body["content"] == [{"type": "tool_use", "id": "call_9", "name": "Read", "input": {"path": "/tmp/x"}}]
    assert upstream.requests[-1].body["tools"][0]["function"]["name"] == "Read"


LONG_TOOL = "mcp__company-knowledge-base-server__search_engineering_design_documents_by_keyword"  # 86 chars


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_name_shortened_for_the_backend_comes_back_as_the_client_sent_it(translator, upstream, stream):
    tools = [{"name": LONG_TOOL, "description": "search", "input_schema": {"type": "object", "properties": {}}}]
    probe = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},  # learn the backend's name
                       json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER, "tools": tools})
    assert probe.status_code == 200, probe.text
    short = upstream.requests[-1].body["tools"][0]["function"]["name"]
    assert short != LONG_TOOL and len(short) <= 64
    if stream:
        upstream.push(openai_stream_tool_call("call_5", short, {"q": "auth"}))
        with translator.client(KEY).messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER,
                                                    tools=tools) as s:
            block = s.get_final_message().content[-1]
    else:
        upstream.push(openai_completion(None, finish_reason="tool_calls",
                                        tool_calls=[openai_tool_call("call_5", short, {"q": "auth"})]))
        block = translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER,
                                                       tools=tools).content[-1]
    assert (block.type, block.name, block.input) == ("tool_use", LONG_TOOL, {"q": "auth"})


# ------------------------------------------------------------------ streaming


def test_stream_text_accumulates_exactly(translator, upstream):
    upstream.push(openai_stream_text(["Hel", "lo, ", "world"]))
    with translator.client(KEY).messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == "Hello, world"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7
    body = upstream.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert upstream.requests[-1].api_key == KEY


def test_stream_tool_call_input_not_lost(translator, upstream):
    upstream.push(openai_stream_tool_call("call_1", "Bash", {"command": "echo hi", "timeout": 5}, text="Running"))
    with translator.client(KEY).messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Running"
    assert final.content[1].input == {"command": "echo hi", "timeout": 5}
    assert final.content[1].name == "Bash" and final.stop_reason == "tool_use"


def test_stream_parallel_tool_calls_in_one_chunk_and_interleaved(translator, upstream):
    chunks = [openai_chunk({"role": "assistant"}),
              openai_chunk({"tool_calls": [
                  {"index": 0, "id": "call_a", "type": "function", "function": {"name": "A", "arguments": "{\"x\":"}},
                  {"index": 1, "id": "call_b", "type": "function", "function": {"name": "B", "arguments": "{\"y\":"}}]}),
              openai_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "2}"}}]}),
              openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
              openai_chunk({}, finish_reason="tool_calls"), openai_usage_chunk()]
    upstream.push(openai_stream(chunks))
    with translator.client(KEY).messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER) as s:
        final = s.get_final_message()
    assert [(b.name, b.input) for b in final.content] == [("A", {"x": 1}), ("B", {"y": 2})]


def _sse_events(raw: str) -> list[tuple[str, dict]]:
    out = []
    for frame in raw.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_stream_grammar_ping_on_silence_and_no_done(translator, upstream):
    # Ping interval is 0.2 s in this fixture; the upstream is silent 0.7 s between frames.
    upstream.push(openai_stream_text(["a", "b"], frame_delay_s=0.35))
    with httpx.stream("POST", f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": USER, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = _sse_events(raw)
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert "ping" in names
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(n == d["type"] for n, d in events)
    assert "[DONE]" not in raw


def test_upstream_failure_mid_stream_is_error_event(translator, upstream):
    upstream.push(openai_stream_text(["partial ", "text", "more", "more"], drop_after_frames=3))
    with httpx.stream("POST", f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": USER, "stream": True}) as r:
        assert r.status_code == 200
        events = _sse_events(r.read().decode())
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [n for n, _ in events]  # never a made-up stop_reason
    with pytest.raises(anthropic.APIStatusError):
        upstream.push(openai_stream_text(["x", "y", "z"], drop_after_frames=2))
        with translator.client(KEY).messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=USER) as s:
            s.get_final_message()


def test_upstream_error_chunk_mid_stream_is_error_event(translator, upstream):
    chunks = [openai_chunk({"role": "assistant", "content": "x"}),
              {"error": {"message": "rate limited for sk-leaked-secret-value-999", "code": 429}}]
    upstream.push(openai_stream(chunks, done=False))
    with httpx.stream("POST", f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": USER, "stream": True}) as r:
        events = _sse_events(r.read().decode())
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "rate_limit_error"
    assert "sk-leaked" not in json.dumps(events)


def test_client_disconnect_cancels_upstream(translator, upstream):
    upstream.push(openai_stream_text([f"piece{i} " for i in range(200)], frame_delay_s=0.02))
    translator.leave_stream_early(KEY, max_tokens=10)
    # The client is gone after ~2 frames; the whole reply would take 4 s. The upstream must see its
    # connection closed well before that.
    assert upstream.wait_aborted(3), "the translator kept the upstream request open after the client left"
    deadline = time.monotonic() + 2
    registry = translator.state.metrics.registry
    while registry.get_sample_value("keyrelay_translator_inflight_requests") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.get_sample_value("keyrelay_translator_inflight_requests") == 0


# ------------------------------------------------------------------ upstream errors before the stream


@pytest.mark.parametrize("status,upstream_type,expect_status,expect_type", [
    (400, "invalid_request_error", 400, "invalid_request_error"),
    (401, "invalid_api_key", 401, "authentication_error"),
    (403, "permission_denied", 403, "permission_error"),
    (404, "not_found", 404, "not_found_error"),
    (413, "too_large", 413, "request_too_large"),
    (422, "unprocessable", 400, "invalid_request_error"),
    (429, "rate_limit", 429, "rate_limit_error"),
    (500, "server_error", 500, "api_error"),
    (502, "bad_gateway", 502, "api_error"),
    (503, "unavailable", 503, "api_error"),
    (504, "timeout", 504, "api_error"),
    (529, "overloaded", 529, "overloaded_error"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_mapping(translator, upstream, status, upstream_type, expect_status, expect_type, stream):
    headers = {"retry-after": "7"} if status == 429 else {}
    upstream.push(openai_error(status, f"failure; your key {KEY} is bad", upstream_type, headers=headers))
    r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": USER, "stream": stream})
    assert r.status_code == expect_status
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == expect_type
    assert KEY not in r.text and "sk-" not in r.text
    if status == 429:
        assert r.headers["retry-after"] == "7"


def test_overloaded_503_and_sdk_exception_types(translator, upstream):
    upstream.push(openai_error(503, "The engine is currently overloaded", "server_error"))
    with pytest.raises(anthropic.APIStatusError) as exc:
        translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=USER)
    assert exc.value.status_code == 529 and exc.value.body["error"]["type"] == "overloaded_error"
    upstream.push(openai_error(429, "slow down", headers={"retry-after": "3"}))
    with pytest.raises(anthropic.RateLimitError) as exc:
        translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=USER)
    assert exc.value.response.headers["retry-after"] == "3"


def test_connection_refused_and_timeout(make_translator):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    srv = make_translator(OPENAI_BASE_URL=f"http://127.0.0.1:{dead_port}/v1")
    r = httpx.post(f"{srv.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER})
    assert r.status_code == 502 and r.json()["error"]["type"] == "api_error"
    assert "unreachable" in r.json()["error"]["message"]
    with ScriptedUpstream(default=Reply(json_body={}, delay_s=1.5)) as slow:
        srv2 = make_translator("--read-timeout", "0.3", OPENAI_BASE_URL=slow.url)
        r = httpx.post(f"{srv2.url}/v1/messages", headers={"x-api-key": KEY},
                       json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER})
        assert r.status_code == 504 and r.json()["error"]["type"] == "api_error"


# ------------------------------------------------------------------ our own 4xx


@pytest.mark.parametrize("content,expect", [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'{"model": "claude-sonnet-4-5", "messages": []}', "max_tokens"),
    (b'{"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}', "role"),
    (b'{"model": "claude-sonnet-4-5", "max_tokens": "many", "messages": []}', "max_tokens"),
])
def test_bad_requests_are_400_in_anthropic_shape(translator, upstream, content, expect):
    r = httpx.post(f"{translator.url}/v1/messages", content=content,
                   headers={"x-api-key": KEY, "content-type": "application/json"})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert expect in body["error"]["message"]
    assert not upstream.requests


def test_unknown_fields_are_dropped_not_422(translator, upstream):
    upstream.push(openai_completion("ok"))
    r = httpx.post(f"{translator.url}/v1/messages?beta=true", headers={"x-api-key": KEY}, json={
        "model": "claude-sonnet-4-5", "max_tokens": 64000, "messages": USER,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "adaptive"}, "metadata": {"user_id": "user_abc"},
        "context_management": {"edits": []}, "output_config": {"effort": "high"}, "brand_new_field": 1})
    assert r.status_code == 200, r.text
    sent = upstream.requests[-1].body
    assert "context_management" not in sent and "brand_new_field" not in sent
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_tokens"] == 32768  # capped to gpt-4.1's output limit from LiteLLM's model metadata


def test_body_limit_413(upstream, make_translator):
    srv = make_translator("--max-body-bytes", "4096", OPENAI_BASE_URL=upstream.url + "/v1")
    big = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "x" * 10000}]}).encode()
    r = httpx.post(f"{srv.url}/v1/messages", content=big, headers={"x-api-key": KEY})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunked():  # no content-length: the limit is enforced while reading
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    r = httpx.post(f"{srv.url}/v1/messages", content=chunked(), headers={"x-api-key": KEY})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    assert not upstream.requests


def test_default_body_limit_is_32mb(translator, upstream):
    """A declared length over 32 MB is refused before reading the body (raw socket: httpx will not send a
    content-length that does not match its body)."""
    with socket.create_connection(("127.0.0.1", translator.port), timeout=10) as s:
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n{" % (32 * 1024 * 1024 + 1))
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413")
    assert '"request_too_large"' in head


@pytest.mark.parametrize("method,path,status,err_type", [
    ("GET", "/nope", 404, "not_found_error"),
    ("POST", "/v1/complete", 404, "not_found_error"),
    ("GET", "/v1/messages", 405, "invalid_request_error"),
    ("DELETE", "/", 405, "invalid_request_error"),
    ("GET", "/docs", 404, "not_found_error"),
    ("GET", "/v1/models/claude-unknown", 404, "not_found_error"),
])
def test_unknown_paths_and_methods(translator, method, path, status, err_type):
    r = httpx.request(method, translator.url + path)
    assert r.status_code == status
    assert r.json() == {"type": "error", "error": {"type": err_type, "message": r.json()["error"]["message"]}}


# ------------------------------------------------------------------ probes, models, metrics, count_tokens


def test_probes(translator):
    assert httpx.head(translator.url + "/").status_code == 200
    assert httpx.get(translator.url + "/").status_code == 200
    assert httpx.get(translator.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(translator.url + "/readyz").status_code == 200


def test_models_list_in_anthropic_shape(translator):
    page = translator.client(KEY).models.list()
    ids = [m.id for m in page.data]
    assert "claude-sonnet-4-5" in ids and "claude-haiku-4-5" in ids
    assert all(m.type == "model" and m.display_name for m in page.data)
    assert translator.client(KEY).models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"


def _metric(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_and_chunks(translator, upstream):
    ok = 'keyrelay_translator_requests_total{provider="openai",route="messages",status="200"}'
    chunks = 'keyrelay_translator_stream_chunks_total{provider="openai"}'
    before = httpx.get(translator.url + "/metrics").text
    upstream.push(openai_completion("x"), openai_stream_text(["a", "b", "c"]))
    c = translator.client(KEY)
    c.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=USER)
    with c.messages.stream(model="claude-sonnet-4-5", max_tokens=5, messages=USER) as s:
        s.get_final_message()
    time.sleep(0.1)  # the stream's bookkeeping runs when the response body is finished
    after = httpx.get(translator.url + "/metrics").text
    assert _metric(after, ok) - _metric(before, ok) == 2
    assert _metric(after, chunks) - _metric(before, chunks) == 6  # role, 3 pieces, finish, usage
    assert "keyrelay_translator_request_seconds_bucket" in after
    assert KEY not in after


def test_count_tokens_counts_system_tools_and_images(translator, upstream):
    c = translator.client(KEY)
    base = c.messages.count_tokens(model="claude-sonnet-4-5", messages=USER).input_tokens
    with_system = c.messages.count_tokens(model="claude-sonnet-4-5", messages=USER,
                                          system="You are a careful assistant. " * 20).input_tokens
    tool = {"name": "Bash", "description": "Run a shell command in the user's workspace and return its output",
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}
    with_tools = c.messages.count_tokens(model="claude-sonnet-4-5", messages=USER, tools=[tool]).input_tokens
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    with_image = c.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": [
        {"type": "text", "text": "hello"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]}]).input_tokens
    big_png = _png(1092, 1092)
    with_big_image = c.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": [
        {"type": "text", "text": "hello"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": big_png}}]}]).input_tokens
    with_url_image = c.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": [
        {"type": "text", "text": "hello"},
        {"type": "image", "source": {"type": "url", "url": "http://192.0.2.1/never-fetched.png"}}]}]).input_tokens
    assert 0 < base < with_system
    assert with_system > base + 100  # 20 repetitions of a 6-token sentence
    assert with_tools > base + 10
    assert with_image > base + 50
    assert with_big_image > with_image + 400  # counted by its size (OpenAI tiles: 4 tiles vs 1)
    assert with_url_image > base + 50  # flat default, the URL is not fetched (192.0.2.1 is unroutable)
    assert not upstream.requests  # counted locally, no upstream call


def _png(width: int, height: int) -> str:
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x00" * (width * 3) for _ in range(height))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def test_body_just_under_32mb_is_accepted(translator, upstream):
    upstream.push(openai_completion("big ok"))
    data = "A" * (30 * 1024 * 1024)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "what is this"}]}]}
    r = httpx.post(f"{translator.url}/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    sent = upstream.requests[-1].body["messages"][0]["content"]
    assert any(p.get("type") == "image_url" and p["image_url"]["url"].endswith("A" * 100) for p in sent)


def test_upstream_error_metric_counts_only_upstream_failures(translator, upstream):
    name = 'keyrelay_translator_upstream_errors_total{provider="openai",status="%d"}'
    before = httpx.get(translator.url + "/metrics").text
    httpx.post(f"{translator.url}/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 5,
                                                      "messages": USER})  # no key: our 401
    upstream.push(openai_error(401, "bad key"))
    httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
               json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER})  # upstream's 401
    after = httpx.get(translator.url + "/metrics").text
    assert _metric(after, name % 401) - _metric(before, name % 401) == 1


def test_client_gone_mid_body_is_counted_and_nothing_goes_upstream(translator, upstream):
    gone = 'keyrelay_translator_requests_total{provider="",route="messages",status="499"}'
    before = _metric(httpx.get(translator.url + "/metrics").text, gone)
    with socket.create_connection(("127.0.0.1", translator.port), timeout=5) as s:
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"x-api-key: " + KEY.encode() + b"\r\ncontent-length: 500\r\n\r\n{\"model\": \"claude")
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while _metric(httpx.get(translator.url + "/metrics").text, gone) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(httpx.get(translator.url + "/metrics").text, gone) == before + 1
    assert upstream.requests == []
    upstream.push(openai_completion("still serving"))
    assert translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                                  messages=USER).content[0].text == "still serving"


def test_kept_tool_conversions_send_the_bytes_a_fresh_conversion_sends(make_translator, tmp_path):
    """Claude Code's request again and again to two routes whose caps convert tools differently (plain OpenAI;
    Gemini schemas with shortened names), other tools in between: with the repeated-tools cache (tools kept
    converted and encoded per caps) the upstream gets byte for byte what it gets with the cache off."""
    from pathlib import Path

    cc = json.loads((Path(__file__).parent / "fixtures" / "claude_code_request.json").read_text())
    cc["stream"] = False
    with ScriptedUpstream(default=openai_completion("ok")) as up:
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            "version: 1\nrules:\n"
            f"  - match: claude-plain\n    target: openai/gpt-4.1\n    base_url: {up.url}/v1\n"
            f"  - match: claude-short\n    target: openai/gpt-4.1\n    base_url: {up.url}/v1\n"
            "    caps: {gemini_schema: true, max_tool_name_length: 8}\n")
        sent: dict[str, list[bytes]] = {}
        for setting in ("4194304", "0"):
            srv = make_translator(TRANSLATOR_ROUTES=str(routes), TRANSLATOR_TOOLS_CACHE_BYTES=setting)
            bodies = []
            for model, tools in [("claude-plain", None), ("claude-plain", None), ("claude-short", None),
                                 ("claude-plain", cc["tools"][:3]), ("claude-short", None), ("claude-plain", None),
                                 ("claude-short", None)]:
                body = {**cc, "model": model, **({"tools": tools} if tools else {})}
                r = httpx.post(f"{srv.url}/v1/messages", headers={"x-api-key": KEY}, content=json.dumps(body))
                assert r.status_code == 200 and r.json()["content"][0]["text"] == "ok"
                bodies.append(up.requests[-1].raw)
            sent[setting] = bodies
            cache = srv.app.state.keyrelay.repeated_tools
            if cache is not None:
                (entry,) = cache._entries.values()  # noqa: SLF001
                assert len(entry.forms) == 2  # one conversion per caps
    assert sent["4194304"] == sent["0"]
    short = json.loads(sent["0"][2])
    assert any(len(t["function"]["name"]) <= 8 and t["function"]["name"] != "Bash" for t in short["tools"])
