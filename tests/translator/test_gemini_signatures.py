"""Gemini thought signatures through the LiteLLM `gemini/` path, against a scripted generateContent upstream that
answers 400 (as Gemini 3 does) unless every signed function call of earlier turns comes back with its real
signature. Parallel calls: Gemini signs only the first functionCall part; the others must come back unsigned
(no placeholder). The client sees tool_use ids within Anthropic's pattern.

Wire format as Google documents it (ai.google.dev/gemini-api/docs/thought-signatures): a response part
`{"functionCall": {...}, "thoughtSignature": "<base64>"}`; the next request repeats the model turn's parts with
the same `thoughtSignature` on the same part.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import pytest

from tests.support.upstream import Recorded, Reply
from tests.translator.streams import checked_stream

KEY = "sk-user-gemini-sig-0001"
SIG_READ = "CiQBVKhc7g+real/signature/for/Read=="  # base64 with '+', '/', '=' as Gemini sends them
SIG_BASH = "Cq8BAVKhc7h+second/turn/signature=="
PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
TOOLS = [
    {"name": "Read", "description": "read a file",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}},
    {"name": "Glob", "description": "find files",
     "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"]}},
    {"name": "Bash", "description": "run a command",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
]


def translator_env(upstream_url: str) -> dict[str, str]:
    # gemini-3 models: LiteLLM would otherwise fill in its placeholder signature, which this upstream rejects
    return {"PREFERRED_PROVIDER": "google", "GEMINI_BASE_URL": upstream_url,
            "BIG_MODEL": "gemini-3-pro-preview", "SMALL_MODEL": "gemini-3-pro-preview"}


def _usage() -> dict:
    return {"promptTokenCount": 20, "candidatesTokenCount": 5, "totalTokenCount": 25}


def _turn1_parts() -> list[dict]:
    return [
        {"text": "Looking."},
        {"functionCall": {"name": "Read", "args": {"file_path": "/src/a.py"}}, "thoughtSignature": SIG_READ},
        {"functionCall": {"name": "Glob", "args": {"pattern": "**/*.py"}}},  # parallel: unsigned
    ]


def _turn2_parts() -> list[dict]:
    return [{"functionCall": {"name": "Bash", "args": {"command": "pytest -q"}}, "thoughtSignature": SIG_BASH}]


def _model_turns(body: dict) -> list[list[dict]]:
    return [c["parts"] for c in body.get("contents", []) if c.get("role") == "model"]


def _fc(part: dict) -> dict | None:
    return part.get("functionCall") or part.get("function_call")  # proto JSON: either spelling


def _signature_problem(body: dict) -> str | None:
    """What Gemini would reject in this request: each function call of an earlier model turn must carry the
    signature it was given (the first of a turn) or none (its parallel siblings)."""
    expected = {"Read": SIG_READ, "Glob": None, "Bash": SIG_BASH}
    for parts in _model_turns(body):
        for p in parts:
            fc = _fc(p)
            if not fc:
                continue
            got = p.get("thoughtSignature") or p.get("thought_signature")
            if got != expected[fc["name"]]:
                return f"Function call {fc['name']} is missing its thought_signature"
    return None


def gemini_upstream(script: list[list[dict]], stream: bool):
    """A generateContent / streamGenerateContent responder: 400 INVALID_ARGUMENT on a bad signature (Gemini's
    answer), else the next scripted model turn."""
    turns = iter(script)

    def answer(rec: Recorded) -> Reply:
        problem = _signature_problem(rec.body)
        if problem:
            return Reply(status=400, json_body={"error": {"code": 400, "message": problem, "status": "INVALID_ARGUMENT"}})
        parts = next(turns)
        if not stream:
            return Reply(json_body={"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP",
                                                    "index": 0}], "usageMetadata": _usage(), "modelVersion": "gemini-3-pro-preview"})
        frames = [{"candidates": [{"content": {"role": "model", "parts": [p]}, "index": 0}]} for p in parts]
        frames[-1]["candidates"][0]["finishReason"] = "STOP"
        frames[-1]["usageMetadata"] = _usage()
        return Reply(sse=[f"data: {json.dumps(f)}" for f in frames], headers={"content-type": "text/event-stream"})

    return answer


def _call(translator, messages: list[dict], stream: bool) -> Any:
    client = translator.client(KEY)
    kw = dict(model="claude-sonnet-4-5", max_tokens=200, messages=messages, tools=TOOLS)
    if stream:
        return checked_stream(translator.url, KEY, kw)[1]
    return client.messages.create(**kw)


def _run_conversation(translator, upstream, stream: bool) -> None:
    upstream.default = gemini_upstream([_turn1_parts(), _turn2_parts(), [{"text": "All green."}]], stream)
    messages: list[dict] = [{"role": "user", "content": "check the tests"}]

    first = _call(translator, messages, stream)
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("Read", {"file_path": "/src/a.py"}), ("Glob", {"pattern": "**/*.py"})]
    assert all(PATTERN.fullmatch(u.id) for u in uses), [u.id for u in uses]
    assert len({u.id for u in uses}) == 2
    messages += [
        {"role": "assistant", "content": [b.to_dict() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": f"result {u.name}"}
                                     for u in uses]},
    ]

    second = _call(translator, messages, stream)
    (bash,) = [b for b in second.content if b.type == "tool_use"]
    assert PATTERN.fullmatch(bash.id) and bash.input == {"command": "pytest -q"}
    messages += [
        {"role": "assistant", "content": [b.to_dict() for b in second.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": bash.id, "content": "3 passed"}]},
    ]

    third = _call(translator, messages, stream)
    assert third.content[0].text == "All green." and third.stop_reason == "end_turn"

    # What the upstream received on every turn
    reqs = upstream.requests
    assert len(reqs) == 3 and all(r.headers["x-goog-api-key"] == KEY for r in reqs)
    assert all(("streamGenerateContent" in r.path) == stream for r in reqs)
    assert _model_turns(reqs[0].body) == []
    for r in reqs[1:]:
        assert _signature_problem(r.body) is None
    calls = [(_fc(p), p.get("thoughtSignature")) for parts in _model_turns(reqs[2].body) for p in parts if _fc(p)]
    assert [(fc["name"], sig) for fc, sig in calls] == [("Read", SIG_READ), ("Glob", None), ("Bash", SIG_BASH)]
    responses = [p.get("functionResponse") or p.get("function_response") for c in reqs[2].body["contents"]
                 for p in c["parts"] if "functionResponse" in p or "function_response" in p]
    assert [r["name"] for r in responses] == ["Read", "Glob", "Bash"]
    # LiteLLM's own call ids come back (without the signature it appended for its clients), matching the results
    ids = [fc.get("id") for fc, _ in calls]
    assert all(i and "__thought__" not in i for i in ids) and [r.get("id") for r in responses] == ids


def test_signatures_round_trip_non_streaming(translator, upstream):
    _run_conversation(translator, upstream, stream=False)


def test_signatures_round_trip_streaming(translator, upstream):
    _run_conversation(translator, upstream, stream=True)


def test_upstream_rejects_a_lost_signature(translator, upstream):
    """The scripted upstream really answers 400 when the signature is missing: a client that drops the id's
    payload (sends a fresh id) gets Gemini's 400 through, as invalid_request_error."""
    upstream.default = gemini_upstream([_turn2_parts()], stream=False)
    messages = [
        {"role": "user", "content": "run"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_fresh", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_fresh", "content": "ok"}]},
    ]
    with pytest.raises(anthropic.BadRequestError) as err:
        _call(translator, messages, stream=False)
    assert "thought_signature" in str(err.value)
