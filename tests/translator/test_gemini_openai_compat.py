"""Gemini's OpenAI-compatible endpoint on the native path (a routing rule `openai/gemini-...` with its base URL):
the scripted upstream speaks chat completions as Google documents it for Gemini 3
(ai.google.dev/gemini-api/docs/thought-signatures, "OpenAI compatibility"): each signed tool call carries
`extra_content.google.thought_signature`, parallel calls only on the first; the next request must repeat it on
the same call (same id) or the upstream answers 400."""

from __future__ import annotations

import atexit
import json
import os
import re
import tempfile
import textwrap

import anthropic
import pytest

from tests.support.upstream import Recorded, Reply, openai_chunk, openai_usage_chunk
from tests.translator.streams import checked_stream

KEY = "sk-user-gemini-oai-0001"
SIG = "EjQKMgG+gemini/openai/compat/sig=="
PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
TOOLS = [{"name": n, "description": n, "input_schema": {"type": "object", "properties": {"p": {"type": "string"}}}}
         for n in ("Read", "Glob")]


def translator_env(upstream_url: str) -> dict[str, str]:
    routes = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    routes.write(textwrap.dedent(f"""
        version: 1
        rules:
          - match: "claude-*"
            target: openai/gemini-3-pro-preview
            base_url: {upstream_url}/v1beta/openai
    """))
    routes.close()
    atexit.register(os.unlink, routes.name)  # read once, when the module's translator starts
    return {"TRANSLATOR_ROUTES": routes.name}


def _calls() -> list[dict]:
    return [
        {"id": "function-call-1", "type": "function", "function": {"name": "Read", "arguments": '{"p": "a"}'},
         "extra_content": {"google": {"thought_signature": SIG}}},
        {"id": "function-call-2", "type": "function", "function": {"name": "Glob", "arguments": '{"p": "*"}'}},
    ]


def _problem(body: dict) -> str | None:
    for m in body["messages"]:
        for c in m.get("tool_calls") or ():
            want = SIG if c["id"] == "function-call-1" else None
            got = ((c.get("extra_content") or {}).get("google") or {}).get("thought_signature")
            if got != want or c["id"] not in ("function-call-1", "function-call-2"):
                return f"Function call is missing a thought_signature in functionCall parts ({c['id']})"
    return None


def upstream_answer():
    turn = {"n": 0}

    def answer(rec: Recorded) -> Reply:
        problem = _problem(rec.body)
        if problem:
            return Reply(status=400, json_body=[{"error": {"code": 400, "message": problem, "status": "INVALID_ARGUMENT"}}])
        turn["n"] += 1
        if turn["n"] == 1:
            msg = {"role": "assistant", "content": None, "tool_calls": _calls()}
            finish = "tool_calls"
        else:
            msg = {"role": "assistant", "content": "done"}
            finish = "stop"
        if not rec.body.get("stream"):
            return Reply(json_body={"id": "x", "object": "chat.completion", "model": "gemini-3-pro-preview",
                                    "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})
        if msg.get("tool_calls"):
            deltas = [{"role": "assistant", "tool_calls": [{**c, "index": i}]} for i, c in enumerate(msg["tool_calls"])]
        else:
            deltas = [{"role": "assistant", "content": msg["content"]}]
        frames = [openai_chunk(d) for d in deltas] + [openai_chunk({}, finish_reason=finish), openai_usage_chunk()]
        return Reply(sse=[f"data: {json.dumps(f)}" for f in frames] + ["data: [DONE]"],
                     headers={"content-type": "text/event-stream"})

    return answer


def _run(translator, upstream, stream: bool) -> None:
    upstream.default = upstream_answer()
    client = translator.client(KEY)
    messages: list[dict] = [{"role": "user", "content": "go"}]
    kw = dict(model="claude-sonnet-4-5", max_tokens=100, tools=TOOLS)
    if stream:
        first = checked_stream(translator.url, KEY, {"messages": messages, **kw})[1]
    else:
        first = client.messages.create(messages=messages, **kw)
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["Read", "Glob"] and all(PATTERN.fullmatch(u.id) for u in uses)
    messages += [{"role": "assistant", "content": [b.to_dict() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": "r"} for u in uses]}]
    second = client.messages.create(messages=messages, **kw)
    assert second.content[0].text == "done"
    reqs = upstream.requests
    assert [r.path for r in reqs] == ["/v1beta/openai/chat/completions"] * 2
    assert all(r.api_key == KEY for r in reqs)
    sent = reqs[1].body["messages"]
    assert sent[1]["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": SIG}}
    assert "extra_content" not in sent[1]["tool_calls"][1]
    assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == ["function-call-1", "function-call-2"]


def test_signature_round_trip_non_streaming(translator, upstream):
    _run(translator, upstream, stream=False)


def test_signature_round_trip_streaming(translator, upstream):
    _run(translator, upstream, stream=True)


def test_upstream_rejects_the_call_without_its_signature(translator, upstream):
    upstream.default = upstream_answer()
    messages = [{"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "function-call-1", "name": "Read", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "function-call-1", "content": "r"}]}]
    with pytest.raises(anthropic.BadRequestError):
        translator.client(KEY).messages.create(model="claude-sonnet-4-5", max_tokens=10, tools=TOOLS, messages=messages)
