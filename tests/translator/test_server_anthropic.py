"""Anthropic passthrough: the scripted upstream answers /v1/messages in Anthropic's own format; the translator
forwards the body unconverted (model mapped), `anthropic-version`/`anthropic-beta`, and the per-user key as
x-api-key."""

from __future__ import annotations

import json

import httpx

from tests.support.upstream import Reply, anthropic_message, anthropic_stream, anthropic_stream_text

KEY = "sk-user-anthropic-0001"
USER = [{"role": "user", "content": "hello"}]


def translator_env(upstream_url: str) -> dict[str, str]:
    return {"PREFERRED_PROVIDER": "anthropic", "ANTHROPIC_BASE_URL": upstream_url, "TRANSLATOR_PING_INTERVAL": "0.2"}


def test_passthrough_non_streaming(translator, upstream):
    upstream.push(anthropic_message("from anthropic", model="claude-upstream-name"))
    beta = "context-management-2025-06-27,oauth-2025-04-20"
    client = translator.client(KEY, default_headers={"anthropic-beta": beta})
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=USER,
                                 extra_body={"context_management": {"edits": []}})
    assert msg.content[0].text == "from anthropic"
    assert msg.model == "claude-sonnet-4-5"
    rec = upstream.requests[-1]
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == KEY and "authorization" not in rec.headers
    assert rec.headers["anthropic-beta"] == "context-management-2025-06-27,oauth-2025-04-20"
    assert rec.headers["anthropic-version"]
    # Unconverted: Anthropic-only fields survive.
    assert rec.body["context_management"] == {"edits": []}
    assert rec.body["messages"] == USER and rec.body["model"] == "claude-sonnet-4-5"


def test_passthrough_streaming_bytes_and_model_name(translator, upstream):
    upstream.push(anthropic_stream_text("streamed!", model="claude-upstream-name"))
    with translator.client(KEY).messages.stream(model="claude-opus-4-1", max_tokens=20, messages=USER) as s:
        final = s.get_final_message()
    assert final.content[0].text == "streamed!"
    assert final.model == "claude-opus-4-1"
    assert upstream.requests[-1].body["stream"] is True
    assert upstream.requests[-1].api_key == KEY


def test_passthrough_tool_use_stream(translator, upstream):
    start = {"type": "message_start", "message": {
        "id": "msg_u", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}
    events = [("message_start", start),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                                                         "input": {}}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "input_json_delta", "partial_json": "{\"command\": "}}),
              ("ping", {"type": "ping"}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "input_json_delta", "partial_json": "\"ls\"}"}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0}),
              ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                                    "stop_sequence": None},
                                 "usage": {"output_tokens": 9}}),
              ("message_stop", {"type": "message_stop"})]
    upstream.push(anthropic_stream(events))
    with translator.client(KEY).messages.stream(model="claude-sonnet-4-5", max_tokens=20, messages=USER) as s:
        final = s.get_final_message()
    assert final.content[0].input == {"command": "ls"}
    assert final.stop_reason == "tool_use"


def test_passthrough_drops_only_translator_made_thinking(translator, upstream):
    upstream.push(anthropic_message("ok"))
    history = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "from another backend", "signature": "keyrelay-unsigned"},
            {"type": "thinking", "thinking": "real", "signature": "EqQBCkYIBxgCKkD"},
            {"type": "text", "text": "a1"}]},
        {"role": "user", "content": "q2"},
    ]
    r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": history})
    assert r.status_code == 200, r.text
    sent = upstream.requests[-1].body["messages"][1]["content"]
    assert [b.get("signature") for b in sent if b["type"] == "thinking"] == ["EqQBCkYIBxgCKkD"]


def test_passthrough_removes_an_assistant_turn_left_empty(translator, upstream):
    # Anthropic rejects empty content and empty text blocks: a turn that held only translator-made thinking goes.
    upstream.push(anthropic_message("ok"))
    history = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "from another backend", "signature": "keyrelay-unsigned"}]},
        {"role": "user", "content": "q2"},
    ]
    r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": history})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].body["messages"] == [history[0], history[2]]


def test_passthrough_upstream_errors_pass_with_mapping(translator, upstream):
    upstream.push(Reply(status=529, json_body={"type": "error", "error": {"type": "overloaded_error",
                                                                          "message": "Overloaded"}}))
    r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER, "stream": True})
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    upstream.push(Reply(status=401, json_body={"type": "error", "error": {"type": "authentication_error",
                                                                          "message": f"invalid x-api-key {KEY}"}}))
    r = httpx.post(f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER})
    assert r.status_code == 401 and KEY not in r.text


def test_passthrough_mid_stream_drop_is_error_event(translator, upstream):
    reply = anthropic_stream_text("x")
    reply.drop_after_frames = 3
    upstream.push(reply)
    with httpx.stream("POST", f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER, "stream": True}) as r:
        raw = r.read().decode()
    frames = [f for f in raw.split("\n\n") if f.strip()]
    assert frames[0].startswith("event: message_start")
    assert frames[-1].startswith("event: error")
    assert json.loads(frames[-1].split("data: ", 1)[1])["error"]["type"] == "api_error"


def test_count_tokens_forwarded_to_anthropic(translator, upstream):
    upstream.push(Reply(json_body={"input_tokens": 1234}))
    n = translator.client(KEY).messages.count_tokens(model="claude-sonnet-4-5", messages=USER).input_tokens
    assert n == 1234
    assert upstream.requests[-1].path == "/v1/messages/count_tokens"
    assert upstream.requests[-1].api_key == KEY


def test_passthrough_client_disconnect_closes_upstream(translator, upstream):
    start = {"type": "message_start", "message": {
        "id": "msg_u", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}
    events = [("message_start", start),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": f"w{i} "}}) for i in range(200)]
    reply = anthropic_stream(events)
    reply.frame_delay_s = 0.02
    upstream.push(reply)
    translator.leave_stream_early(KEY)
    assert upstream.wait_aborted(3)


def test_passthrough_ping_on_silence(translator, upstream):
    reply = anthropic_stream_text("late")
    reply.frame_delay_s = 0.3  # the module's translator pings after 0.2 s of silence
    upstream.push(reply)
    with httpx.stream("POST", f"{translator.url}/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER, "stream": True}) as r:
        raw = r.read().decode()
    names = [f.split("\n", 1)[0].removeprefix("event: ") for f in raw.split("\n\n") if f.strip()]
    assert names[0] == "message_start" and "ping" in names and names[-1] == "message_stop"
