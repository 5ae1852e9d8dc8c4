"""Anthropic Messages <-> OpenAI Responses API, pure: request bodies (checked against the official `openai`
package's request types), responses and streams built from the documented wire shapes (tests/support/
responses_wire.py, each fixture validated against `openai.types.responses`), every stream through the grammar
checker and the anthropic SDK's accumulator, and the reasoning round trip across turns."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from pydantic import TypeAdapter

from tests.support import responses_wire as w
from tests.translator.test_convert_stream import TH, TU, T, check_grammar, sdk_final_message
from translator.convert.call_ids import ID_PATTERN
from translator.convert.openai_request import BackendCaps
from translator.convert.openai_response import SYNTHETIC_SIGNATURE, is_synthetic_signature
from translator.convert.responses_request import anthropic_to_responses, reasoning_signature
from translator.convert.responses_response import (chat_finish_reason, chat_usage, responses_error,
                                                   responses_to_anthropic)
from translator.convert.responses_stream import ResponsesStreamConverter
from translator.errors import ApiError
from translator.schemas.anthropic import MessagesRequest
from translator.sse import encode_events

CAPS = BackendCaps(reasoning_effort=True, sampling_params=False, max_tool_call_id_length=64)
_REQUEST = TypeAdapter(ResponseCreateParamsNonStreaming)
_EVENT = TypeAdapter(ResponseStreamEvent)

READ = {"name": "Read", "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}


def req(**kw: Any) -> MessagesRequest:
    base: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    base.update(kw)
    return MessagesRequest.model_validate(base)


def convert(r: MessagesRequest, caps: BackendCaps = CAPS, notes: list | None = None) -> dict:
    body = anthropic_to_responses(r, model="gpt-5-codex", caps=caps, notes=notes)
    _REQUEST.validate_python({k: v for k, v in body.items() if k != "stream"})  # the vendor's request shape
    return body


SIG = reasoning_signature("rs_earlier", "gAAAAencrypted==")

# ----------------------------------------------------------------------------------------- request


@pytest.mark.parametrize(
    "kw, expected",
    [
        pytest.param(
            {"system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Be brief."}]},
            {"instructions": "You are Claude Code.\n\nBe brief.", "input": [{"role": "user", "content": "hi"}]},
            id="system-blocks-to-instructions",
        ),
        pytest.param(
            {"messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"},
                                             {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
            ]},
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "look"},
                                                    {"type": "input_image", "image_url": "data:image/png;base64,iVBOR", "detail": "auto"}]}]},
            id="image-to-input-image",
        ),
        pytest.param(
            {"messages": [
                {"role": "user", "content": "fix it"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Plan.", "signature": SIG},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "call_abc", "name": "Read", "input": {"file_path": "/a"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_abc", "content": "x = 1"},
                                             {"type": "text", "text": "go on"}]},
            ], "tools": [READ]},
            {"input": [
                {"role": "user", "content": "fix it"},
                {"type": "reasoning", "id": "rs_earlier", "summary": [{"type": "summary_text", "text": "Plan."}],
                 "encrypted_content": "gAAAAencrypted=="},
                {"role": "assistant", "content": "Reading."},
                {"type": "function_call", "call_id": "call_abc", "name": "Read", "arguments": '{"file_path":"/a"}'},
                {"type": "function_call_output", "call_id": "call_abc", "output": "x = 1"},
                {"role": "user", "content": "go on"},
            ]},
            id="reasoning-item-text-call-and-output-in-order",
        ),
        pytest.param(
            {"messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "from another backend", "signature": SYNTHETIC_SIGNATURE},
                    {"type": "thinking", "thinking": "anthropic's", "signature": "EqQBCkYIARgCKkCsig"},
                    {"type": "redacted_thinking", "data": "abc"},
                    {"type": "text", "text": "a"}]},
                {"role": "user", "content": "more"},
            ]},
            {"input": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}]},
            id="foreign-thinking-dropped",
        ),
        pytest.param(
            {"messages": [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "mid-conversation note"},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nobody", "content": "r", "is_error": True}]},
            ]},
            {"input": [{"role": "user", "content": "q"}, {"role": "developer", "content": "mid-conversation note"},
                       {"role": "user", "content": "[result of tool call nobody]\nError: r"}]},
            id="mid-conversation-system-and-orphan-result",
        ),
        pytest.param(
            {"tools": [READ, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5,
                              "allowed_domains": ["docs.python.org"], "user_location": {"type": "approximate", "city": "Berlin", "country": "DE"}},
                       {"type": "web_fetch_20250910", "name": "web_fetch"}],
             "tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
            {"tools": [{"type": "function", "name": "Read", "description": "Read a file", "parameters": READ["input_schema"], "strict": False},
                       {"type": "web_search", "filters": {"allowed_domains": ["docs.python.org"]},
                        "user_location": {"type": "approximate", "city": "Berlin", "country": "DE"}}],
             "tool_choice": "required", "parallel_tool_calls": False},
            id="tools-web-search-mapped-web-fetch-dropped",
        ),
        pytest.param(
            {"tools": [READ], "tool_choice": {"type": "tool", "name": "Read"}},
            {"tool_choice": {"type": "function", "name": "Read"}},
            id="tool-choice-named",
        ),
        pytest.param(
            {"thinking": {"type": "enabled", "budget_tokens": 10000}, "max_tokens": 64000},
            {"reasoning": {"effort": "medium", "summary": "auto"}, "max_output_tokens": 64000, "store": False,
             "include": ["reasoning.encrypted_content"]},
            id="thinking-budget-to-effort-store-false-include-encrypted",
        ),
        pytest.param(
            {"thinking": {"type": "adaptive"}, "metadata": {"user_id": "u" * 150}, "stop_sequences": ["END"], "temperature": 0.2},
            {"reasoning": {"effort": "medium", "summary": "auto"}},
            id="adaptive-user-hash-no-stop-no-temperature",
        ),
    ],
)
def test_request_mapping(kw, expected):
    body = convert(req(**kw))
    for key, value in expected.items():
        assert body[key] == value, key
    assert body["model"] == "gpt-5-codex" and body["store"] is False
    assert body["include"] == ["reasoning.encrypted_content"]
    assert "stop" not in body and "temperature" not in body and "messages" not in body


def test_request_for_a_model_without_reasoning_and_a_tiny_max_tokens():
    notes: list[str] = []
    body = convert(req(max_tokens=1, thinking={"type": "enabled", "budget_tokens": 2000}), caps=BackendCaps(), notes=notes)
    assert body["max_output_tokens"] == 16 and body["store"] is False
    assert "include" not in body and "reasoning" not in body
    assert any("minimum of 16" in n for n in notes) and any("dropped thinking" in n for n in notes)


def test_request_notes_name_what_was_dropped():
    notes: list[str] = []
    body = convert(req(stop_sequences=["END"], metadata={"user_id": "u" * 150}, top_k=5,
                       tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}, {"type": "bash_20250124", "name": "bash"}]), notes=notes)
    assert body["safety_identifier"].startswith("user-sha256-") and len(body["safety_identifier"]) == 64
    assert "tools" not in body
    assert any("stop_sequences" in n for n in notes)
    assert any(n.startswith("dropped server tool 'web_fetch'") for n in notes)
    assert any(n.startswith("dropped server tool 'bash'") for n in notes)


def test_request_stream_and_the_claude_code_fixture():
    from pathlib import Path

    raw = json.loads((Path(__file__).parent / "fixtures" / "claude_code_request.json").read_text())
    body = anthropic_to_responses(MessagesRequest.model_validate(raw), model="gpt-5-codex", caps=CAPS)
    assert body["stream"] is True and "stream_options" not in body
    _REQUEST.validate_python({k: v for k, v in body.items() if k != "stream"})
    kinds = {i.get("type", "message") for i in body["input"]}
    assert kinds <= {"message", "function_call", "function_call_output", "reasoning"}
    assert len([t for t in body["tools"] if t["type"] == "function"]) == 24


# ----------------------------------------------------------------------------------------- response

OUT_FULL = [
    w.reasoning("rs_1", ["Plan the edit.", "Then test."], "gAAAAenc1"),
    w.message("msg_1", "I'll read it."),
    w.function_call("fc_1", "call_1", "Read", '{"file_path": "/a.py"}'),
    w.function_call("fc_2", "call_2", "Bash", '{"command": "pytest -q"}'),
]
SIG1 = reasoning_signature("rs_1", "gAAAAenc1")

RESPONSE_CASES = [
    pytest.param(
        w.response(OUT_FULL, usage_=w.usage(1000, 50, cached=800, reasoning_tokens=30)), {},
        [TH("Plan the edit.\n\nThen test.", SIG1), T("I'll read it."), TU("call_1", "Read", {"file_path": "/a.py"}),
         TU("call_2", "Bash", {"command": "pytest -q"})],
        "tool_use", None, {"input_tokens": 200, "output_tokens": 50, "cache_read_input_tokens": 800},
        id="reasoning-text-two-calls-cached",
    ),
    pytest.param(
        w.response([w.message("m", "Hello")], usage_=w.usage(5, 1)), {}, [T("Hello")], "end_turn", None,
        {"input_tokens": 5, "output_tokens": 1}, id="text",
    ),
    pytest.param(
        w.response([w.reasoning("rs_2", [], "gAAAAenc2"), w.message("m", "ok")], usage_=w.usage(5, 1)), {},
        [TH("", reasoning_signature("rs_2", "gAAAAenc2")), T("ok")], "end_turn", None,
        {"input_tokens": 5, "output_tokens": 1}, id="reasoning-without-summary-still-carried",
    ),
    pytest.param(
        w.response([w.message("m", "cut sh")], status="incomplete", incomplete_reason="max_output_tokens", usage_=w.usage(5, 9)), {},
        [T("cut sh")], "max_tokens", None, {"input_tokens": 5, "output_tokens": 9}, id="incomplete-max-output-tokens",
    ),
    pytest.param(
        w.response([w.message("m", "", refusal="I can't help with that.")], usage_=w.usage(5, 5)), {},
        [T("I can't help with that.")], "refusal", None, {"input_tokens": 5, "output_tokens": 5}, id="refusal",
    ),
    pytest.param(
        w.response([w.message("m", "1, 2, 3 END 4, 5")], usage_=w.usage(5, 5)), {"stop_sequences": ["END", "2,"]},
        [T("1, ")], "stop_sequence", "2,", {"input_tokens": 5, "output_tokens": 5}, id="stop-sequence-found-and-cut",
    ),
    pytest.param(
        w.response([w.web_search_call("ws_1", "python 3.14 release"), w.message("m", "It was released in October.")], usage_=w.usage(5, 5)), {},
        [T("It was released in October.")], "end_turn", None, {"input_tokens": 5, "output_tokens": 5}, id="web-search-call-item-skipped",
    ),
    pytest.param(
        w.response([w.function_call("fc", "call|odd:id", "mcp__server__a_tool_with_a_very_long_name_0123456789_0123456789_0123", "{}")], usage_=w.usage(1, 1)),
        {"tool_names": {"mcp__server__a_tool_with_a_very_long_name_0123456789_0123456789_0123": "mcp__server__original"}},
        [{"type": "tool_use", "id": "*", "name": "mcp__server__original", "input": {}}], "tool_use", None,
        {"input_tokens": 1, "output_tokens": 1}, id="odd-call-id-wrapped-name-mapped-back",
    ),
]


@pytest.mark.parametrize("resp, kw, content, stop_reason, stop_sequence, usage_", RESPONSE_CASES)
def test_response_mapping(resp, kw, content, stop_reason, stop_sequence, usage_):
    Response.model_validate(resp)
    msg = responses_to_anthropic(resp, model="claude-sonnet-4-5", **kw)
    for got, exp in zip(msg["content"], content):
        if exp.get("id") == "*":
            assert ID_PATTERN.fullmatch(got["id"])
            exp = {**exp, "id": got["id"]}
        assert got == exp
    assert len(msg["content"]) == len(content)
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop_reason, stop_sequence)
    assert msg["usage"] == usage_ and msg["model"] == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    "error, status, kind",
    [
        ({"code": "rate_limit_exceeded", "message": "slow down"}, 429, "rate_limit_error"),
        ({"code": "server_error", "message": "boom"}, 500, "api_error"),
        ({"code": "invalid_prompt", "message": "flagged"}, 400, "invalid_request_error"),
        ({"code": "something_new", "message": "?"}, 502, "api_error"),
        ({"code": "invalid_api_key", "message": "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz012345"}, 502, "api_error"),
        (None, 502, "api_error"),
    ],
)
def test_error_mapping(error, status, kind):
    s, k, message = responses_error(error)
    assert (s, k) == (status, kind)
    assert message.startswith("upstream responses API error")
    assert "abcdefghijklmnop" not in message


def test_reasoning_round_trip_across_turns():
    """Turn 1's reasoning item comes back as a thinking block; sent back, it is the same item upstream."""
    first = responses_to_anthropic(w.response(OUT_FULL, usage_=w.usage(1, 1)), model="m")
    assert is_synthetic_signature(first["content"][0]["signature"])  # never sent to an Anthropic backend
    body = convert(req(tools=[READ], messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a"},
                                     {"type": "tool_result", "tool_use_id": "call_2", "content": "b"}]},
    ]))
    assert body["input"][1] == {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAAenc1",
                                "summary": [{"type": "summary_text", "text": "Plan the edit.\n\nThen test."}]}
    assert [i.get("type") for i in body["input"][2:]] == [None, "function_call", "function_call", "function_call_output", "function_call_output"]


# ----------------------------------------------------------------------------------------- stream


def run_stream(events: list[dict], **kw: Any) -> tuple[list, dict]:
    for e in events:
        _EVENT.validate_python(e)
    conv = ResponsesStreamConverter(model="claude-sonnet-4-5", input_tokens=42, **kw)
    out: list = []
    for e in events:
        out += conv.feed(json.loads(json.dumps(e)))
    out += conv.finish()
    check_grammar(out)
    return out, sdk_final_message(encode_events(out))


@pytest.mark.parametrize("resp, kw, content, stop_reason, stop_sequence, usage_", RESPONSE_CASES)
@pytest.mark.parametrize("pieces", [1, 3, 50])
def test_stream_rebuilds_the_same_message_as_the_response(resp, kw, content, stop_reason, stop_sequence, usage_, pieces):
    events = w.stream_events(resp["output"], status=resp["status"], usage_=resp["usage"],
                             incomplete_reason=(resp["incomplete_details"] or {}).get("reason"), pieces=pieces)
    _, msg = run_stream(events, **kw)
    for got, exp in zip(msg["content"], content):
        if exp.get("id") == "*":
            exp = {**exp, "id": got["id"]}
        assert got == exp
    assert len(msg["content"]) == len(content)
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop_reason, stop_sequence)
    assert {k: v for k, v in msg["usage"].items() if v is not None} == usage_


def test_stream_tool_block_starts_at_output_item_added_and_arguments_flow():
    events = w.stream_events([w.function_call("fc", "call_w", "Write", '{"file_path": "/a", "content": "' + "x" * 40 + '"}')],
                             usage_=w.usage(1, 1), pieces=5)
    conv = ResponsesStreamConverter(model="m")
    per = [conv.feed(e) for e in events]
    at = next(i for i, e in enumerate(events) if e["type"] == "response.output_item.added")
    assert [d["content_block"]["id"] for n, d in per[at] if n == "content_block_start"] == ["call_w"]
    deltas = [i for i, e in enumerate(events) if e["type"] == "response.function_call_arguments.delta"]
    assert all(any(d.get("delta", {}).get("type") == "input_json_delta" for _, d in per[i]) for i in deltas)


def test_stream_two_reasoning_items_keep_their_own_signatures():
    out = [w.reasoning("rs_a", ["A"], "encA"), w.function_call("fc", "call_1", "Read", "{}"),
           w.reasoning("rs_b", [], "encB"), w.message("m", "done")]
    _, msg = run_stream(w.stream_events(out, usage_=w.usage(1, 1)))
    assert msg["content"] == [TH("A", reasoning_signature("rs_a", "encA")), TU("call_1", "Read", {}),
                              TH("", reasoning_signature("rs_b", "encB")), T("done")]


@pytest.mark.parametrize(
    "tail, kind",
    [
        ({"type": "error", "code": "rate_limit_exceeded", "message": "Rate limit reached", "param": None, "sequence_number": 9}, "rate_limit_error"),
        ({"type": "response.failed", "sequence_number": 9,
          "response": w.response([], status="failed", error={"code": "server_error", "message": "The server had an error"})}, "api_error"),
    ],
)
def test_stream_failure_is_an_error_event(tail, kind):
    _EVENT.validate_python(tail)
    conv = ResponsesStreamConverter(model="m")
    events = conv.feed({"type": "response.output_text.delta", "delta": "par", "item_id": "m", "output_index": 0, "content_index": 0})
    with pytest.raises(ApiError) as err:
        conv.feed(tail)
    assert err.value.type == kind and err.value.upstream
    assert conv.failure is not None and conv.failure[1] == kind
    name, data = conv.error(err.value.type, err.value.message)  # what the relay sends
    assert name == "error" and data["error"]["type"] == kind
    assert conv.feed({"type": "response.output_text.delta", "delta": "x"}) == [] and conv.finish() == []


@pytest.mark.parametrize("seed", range(30))
def test_random_splits_never_lose_arguments_or_order(seed):
    """Responses function calls at random points among text and reasoning, every delta cut at random: the SDK
    rebuilds every input, and text keeps its place between the calls."""
    rng = random.Random(seed)
    output: list[dict] = []
    expected: list[dict] = []
    for k in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            output.append(w.reasoning(f"rs_{k}", ["think " * rng.randint(1, 3)], f"enc{k}"))
            expected.append(TH(output[-1]["summary"][0]["text"], reasoning_signature(f"rs_{k}", f"enc{k}")))
        if rng.random() < 0.6:
            output.append(w.message(f"m{k}", "text é日 " * rng.randint(1, 3)))
            expected.append(T(output[-1]["content"][0]["text"]))
        inp = {"path": f"/src/{k}/{'é' * rng.randint(0, 3)}x.py", "n": list(range(rng.randint(0, 4))), "body": "a\nb" * k}
        output.append(w.function_call(f"fc_{k}", f"call_{k}", f"Tool{k}", json.dumps(inp, ensure_ascii=rng.random() < 0.5)))
        expected.append(TU(f"call_{k}", f"Tool{k}", inp))

    def split(text: str) -> list[str]:
        if len(text) < 2:
            return [text] if text else []
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(6, len(text) - 1))))
        return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]

    _, msg = run_stream(w.stream_events(output, usage_=w.usage(3, 3), split=split))
    assert msg["content"] == expected
    assert msg["stop_reason"] == "tool_use"


def test_stream_cut_before_its_final_event_is_an_error():
    conv = ResponsesStreamConverter(model="m")
    for e in w.stream_events([w.message("m", "partial")], usage_=w.usage(1, 1))[:-1]:
        conv.feed(e)
    with pytest.raises(ApiError) as err:
        conv.finish()
    assert err.value.status == 502 and "before its final event" in err.value.message
    stopped = ResponsesStreamConverter(model="m", stop_sequences=["ti"])
    for e in w.stream_events([w.message("m", "partial")], usage_=w.usage(1, 1))[:-1]:
        stopped.feed(e)
    assert stopped.stopped and stopped.finish()[-2][1]["delta"]["stop_reason"] == "stop_sequence"


@pytest.mark.parametrize(
    "resp, finish",
    [
        (w.response([w.message("m", "x")]), "stop"),
        (w.response([w.function_call("f", "c", "Read", "{}")]), "tool_calls"),
        (w.response([w.message("m", "x")], status="incomplete", incomplete_reason="max_output_tokens"), "length"),
        (w.response([], status="incomplete", incomplete_reason="content_filter"), "content_filter"),
        (w.response([], status="failed", error={"code": "server_error", "message": "x"}), None),
    ],
)
def test_finish_reason_for_logs_and_traces(resp, finish):
    assert chat_finish_reason(resp) == finish


def test_usage_in_the_chat_shape():
    from translator.usage import Usage, from_openai

    assert from_openai(chat_usage(w.usage(1000, 60, cached=800, reasoning_tokens=25))) == \
        Usage(input=200, output=60, cache_read=800, reasoning=25)
    assert chat_usage(None) is None
