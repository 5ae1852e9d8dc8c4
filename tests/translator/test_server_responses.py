"""The Responses API backend through the real server: the scripted upstream speaks the Responses wire format
as documented (tests/support/responses_wire.py); sonnet routes to gpt-5-codex, which OpenAI serves only on the
Responses API (the default without a routing rule), haiku to a chat-completions model. Asserts what the
upstream received on every turn: path, key, store false, encrypted reasoning asked for, reasoning items sent
back on the next turn."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.support import responses_wire as w
from tests.support.upstream import Recorded, Reply, openai_completion
from tests.translator.streams import checked_stream
from translator.sse import SSEDecoder

KEY = "sk-user-responses-0001"
READ = {"name": "Read", "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}


def translator_env(upstream_url: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream_url + "/v1", "BIG_MODEL": "gpt-5-codex", "SMALL_MODEL": "gpt-4.1-mini"}


def test_non_streaming_text_with_reasoning_and_usage(translator, upstream):
    upstream.push(Reply(json_body=w.response(
        [w.reasoning("rs_1", ["Short plan."], "gAAAAenc1"), w.message("msg_1", "Hello from codex.")],
        usage_=w.usage(1200, 40, cached=1000, reasoning_tokens=25))))
    msg = translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=300, system="be short",
                                                 messages=[{"role": "user", "content": "hi"}],
                                                 thinking={"type": "enabled", "budget_tokens": 5000})
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "Short plan." and msg.content[0].signature.startswith("keyrelay-rs1.")
    assert msg.content[1].text == "Hello from codex." and msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (200, 40, 1000)
    rec = upstream.requests[-1]
    assert rec.path == "/v1/responses" and rec.api_key == KEY
    b = rec.body
    assert b["model"] == "gpt-5-codex" and b["instructions"] == "be short"
    assert b["input"] == [{"role": "user", "content": "hi"}]
    assert b["store"] is False and b["include"] == ["reasoning.encrypted_content"]
    assert b["reasoning"] == {"effort": "medium", "summary": "auto"} and b["max_output_tokens"] == 300
    assert "stream" not in b and "messages" not in b


def test_chat_model_still_goes_to_chat_completions(translator, upstream):
    upstream.push(openai_completion("chat answer"))
    msg = translator.client(KEY).messages.create(model="claude-haiku-4-5", max_tokens=20,
                                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "chat answer"
    assert upstream.requests[-1].path == "/v1/chat/completions"


def _stream(translator, messages: list[dict], **kw) -> tuple[list, anthropic.types.Message]:
    """Raw SSE (grammar-checked) and the SDK's rebuilt message, from one request."""
    body = {"model": "claude-sonnet-4-5", "max_tokens": 400, "messages": messages, "tools": [READ], **kw}
    return checked_stream(translator.url, KEY, body)


def test_streaming_tool_turn_then_reasoning_carried_to_the_next_turn(translator, upstream):
    turn1 = [w.reasoning("rs_A", ["Need the file first."], "gAAAAencA"), w.message("msg_1", "Reading it."),
             w.function_call("fc_1", "call_read_1", "Read", '{"file_path": "/src/app.py"}')]
    turn2 = [w.reasoning("rs_B", [], "gAAAAencB"), w.message("msg_2", "It defines main().")]
    replies = {"n": 0}

    def answer(rec: Recorded) -> Reply:
        replies["n"] += 1
        out = turn1 if not any(i.get("type") == "function_call_output" for i in rec.body["input"]) else turn2
        return w.stream_reply(w.stream_events(out, usage_=w.usage(500, 30, cached=100)))

    upstream.default = answer
    messages: list[dict] = [{"role": "user", "content": "what does app.py do?"}]
    events, first = _stream(translator, messages, thinking={"type": "adaptive"})
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[2].id == "call_read_1" and first.content[2].input == {"file_path": "/src/app.py"}
    assert first.stop_reason == "tool_use"
    assert any(n == "content_block_delta" and d["delta"]["type"] == "input_json_delta" for n, d in events)

    messages += [{"role": "assistant", "content": [b.to_dict() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_read_1", "content": "def main(): ..."}]}]
    _, second = _stream(translator, messages, thinking={"type": "adaptive"})
    assert [b.type for b in second.content] == ["thinking", "text"] and second.content[1].text == "It defines main()."

    sent = [r.body for r in upstream.requests]
    assert all(r.path == "/v1/responses" and r.api_key == KEY for r in upstream.requests)
    assert all(b["stream"] is True and b["store"] is False and b["include"] == ["reasoning.encrypted_content"] for b in sent)
    later = sent[-1]["input"]
    assert later[0] == {"role": "user", "content": "what does app.py do?"}
    assert later[1] == {"type": "reasoning", "id": "rs_A", "encrypted_content": "gAAAAencA",
                        "summary": [{"type": "summary_text", "text": "Need the file first."}]}
    assert later[2:] == [{"role": "assistant", "content": "Reading it."},
                         {"type": "function_call", "call_id": "call_read_1", "name": "Read", "arguments": '{"file_path":"/src/app.py"}'},
                         {"type": "function_call_output", "call_id": "call_read_1", "output": "def main(): ..."}]


def test_http_error_maps_to_anthropic_shape(translator, upstream):
    upstream.push(Reply(status=429, headers={"retry-after": "7"}, json_body={"error": {
        "message": f"Rate limit reached for {KEY}", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}))
    with pytest.raises(anthropic.RateLimitError) as err:
        translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert KEY not in str(err.value.body) and err.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    "tail, kind",
    [
        (None, "api_error"),  # the body ended before response.completed
        ({"type": "error", "code": "server_error", "message": "The server had an error", "param": None}, "api_error"),
        ({"type": "response.failed", "response": w.response([], status="failed",
                                                            error={"code": "rate_limit_exceeded", "message": "slow"})}, "rate_limit_error"),
    ],
)
def test_failure_mid_stream_is_an_error_event(translator, upstream, tail, kind):
    events = w.stream_events([w.message("m", "partial answer")], usage_=w.usage(1, 1))[:-1]  # no completion
    upstream.push(w.stream_reply(events + ([{**tail, "sequence_number": len(events)}] if tail else [])))
    r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY}, timeout=30,
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    frames = [(e.event, e.json()) for e in SSEDecoder().feed(r.content)]
    assert frames[-1][0] == "error" and frames[-1][1]["error"]["type"] == kind
    assert not any(n == "message_delta" for n, _ in frames)


def test_stop_sequence_found_in_the_stream_though_not_sent(translator, upstream):
    upstream.push(w.stream_reply(w.stream_events([w.message("m", "1, 2, 3 STOP 4, 5")], usage_=w.usage(3, 9), pieces=6)))
    _, msg = checked_stream(translator.url, KEY, {"model": "claude-sonnet-4-5", "max_tokens": 50, "stop_sequences": ["STOP"],
                                                  "messages": [{"role": "user", "content": "count"}]})
    assert msg.content[0].text == "1, 2, 3 " and (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "STOP")
    assert "stop" not in upstream.requests[-1].body


def test_web_search_server_tool_mapped(translator, upstream):
    upstream.push(Reply(json_body=w.response([w.web_search_call("ws_1", "python release"), w.message("m", "Found it.")],
                                             usage_=w.usage(3, 3))))
    msg = translator.client(KEY).messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "search"}],
        tools=[READ, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
               {"type": "web_fetch_20250910", "name": "web_fetch"}])
    assert msg.content[0].text == "Found it."
    tools = upstream.requests[-1].body["tools"]
    assert [t["type"] for t in tools] == ["function", "web_search"]
    assert json.dumps(tools).count("web_fetch") == 0


@pytest.mark.parametrize(
    "model, logged, upstream_tools",
    [
        ("claude-sonnet-4-5", "dropped server tool 'web_fetch'", ["function", "web_search"]),  # Responses
        ("claude-haiku-4-5", "dropped server tool 'web_search'", ["function"]),  # chat completions
    ],
)
def test_removed_server_tools_are_logged_by_name(translator, upstream, caplog, model, logged, upstream_tools):
    import logging

    upstream.default = lambda rec: (Reply(json_body=w.response([w.message("m", "ok")], usage_=w.usage(1, 1)))
                                    if rec.path.endswith("/responses") else openai_completion("ok"))
    with caplog.at_level(logging.INFO, logger="keyrelay.translator"):
        translator.client(KEY).messages.create(
            model=model, max_tokens=5, messages=[{"role": "user", "content": "x"}],
            tools=[READ, {"type": "web_search_20250305", "name": "web_search"}, {"type": "web_fetch_20250910", "name": "web_fetch"}])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("conversion ")]
    assert any(logged in line for line in lines), lines
    body = upstream.requests[-1].body
    assert [t.get("type") for t in body["tools"]] == upstream_tools


def test_stop_sequence_ends_the_upstream_stream_early(translator, upstream):
    """The Responses API takes no stop sequences: once one is found in the text the translator stops reading
    and closes the upstream response (the upstream stops generating) instead of draining it."""
    text = "answer: 42 END " + "and then a long tail nobody asked for " * 20
    events = w.stream_events([w.message("m", text)], usage_=w.usage(3, 300), pieces=40)
    upstream.push(w.stream_reply(events, frame_delay_s=0.02))
    _, msg = checked_stream(translator.url, KEY, {"model": "claude-sonnet-4-5", "max_tokens": 500, "stop_sequences": ["END"],
                                                  "messages": [{"role": "user", "content": "answer"}]})
    assert msg.content[0].text == "answer: 42 " and (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")
    assert upstream.wait_aborted(), "the upstream stream was drained instead of closed"


@pytest.mark.parametrize("stream", [False, True])
def test_usage_accounting_reads_the_responses_usage(translator, upstream, caplog, stream):
    """The request line's tokens (what budgets and metrics count) from the Responses usage: input without the
    cached part, cache reads, output with its reasoning part."""
    import logging

    from translator.usage import Usage

    out = [w.reasoning("rs_u", ["plan"], "encU"), w.function_call("fc_u", "call_u", "Read", '{"file_path": "/a"}')]
    u = w.usage(1000, 60, cached=800, reasoning_tokens=25)
    upstream.push(w.stream_reply(w.stream_events(out, usage_=u)) if stream else Reply(json_body=w.response(out, usage_=u)))
    with caplog.at_level(logging.INFO, logger="keyrelay.translator"):
        kw = dict(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "x"}], tools=[READ])
        if stream:
            checked_stream(translator.url, KEY, kw)
        else:
            translator.client(KEY).messages.create(**kw)
    (line,) = [r for r in caplog.records if r.name == "keyrelay.translator" and r.getMessage() == "request"]
    assert line.tokens == Usage(input=200, output=60, cache_read=800, reasoning=25).as_dict()


@pytest.mark.parametrize("stream", [False, True])
def test_a_large_request_takes_the_offloaded_path(translator, upstream, stream):
    """Over OFFLOAD_BYTES the request is decoded and converted in a worker thread and its converted items are
    released stepwise afterwards: the Responses body (`input`, not `messages`) goes the same way."""
    from translator.request_body import OFFLOAD_BYTES

    big = "x" * (OFFLOAD_BYTES // 50)
    messages = []
    for i in range(60):
        messages += [{"role": "user", "content": f"{i} {big}"}, {"role": "assistant", "content": f"ok {i}"}]
    messages.append({"role": "user", "content": "last"})
    out = [w.message("m", "done")]
    upstream.push(w.stream_reply(w.stream_events(out, usage_=w.usage(1, 1))) if stream
                  else Reply(json_body=w.response(out, usage_=w.usage(1, 1))))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": messages}
    if stream:
        _, msg = checked_stream(translator.url, KEY, body)
    else:
        msg = translator.client(KEY).messages.create(**body)
    assert msg.content[0].text == "done"
    sent = upstream.requests[-1].body["input"]
    assert len(sent) == 121 and sent[-1] == {"role": "user", "content": "last"}
