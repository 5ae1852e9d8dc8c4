"""OpenAI chat completion -> Anthropic message (translator.convert.openai_response)."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message

from translator.convert.openai_response import (
    SYNTHETIC_SIGNATURE,
    is_synthetic_signature,
    map_usage,
    openai_to_anthropic,
    parse_tool_arguments,
)


def completion(message: dict, finish: str | None = "stop", usage: dict | None = None, **choice_extra: Any) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-x",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice_extra}],
        "usage": usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def call(id: str | None, name: str, arguments: Any) -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


CASES = [
    pytest.param(
        completion({"content": "Hello"}),
        {},
        [{"type": "text", "text": "Hello"}],
        "end_turn", None,
        id="text",
    ),
    pytest.param(
        completion({"content": "Let me look.", "tool_calls": [call("call_1", "Read", '{"file_path": "/a"}'), call("call_2", "Glob", '{"pattern": "*"}')]}, "tool_calls"),
        {},
        [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"file_path": "/a"}},
            {"type": "tool_use", "id": "call_2", "name": "Glob", "input": {"pattern": "*"}},
        ],
        "tool_use", None,
        id="text-and-parallel-tool-calls",
    ),
    pytest.param(
        completion({"content": None, "tool_calls": [call("call_1", "Now", "")]}, "stop"),
        {},
        [{"type": "tool_use", "id": "call_1", "name": "Now", "input": {}}],
        "tool_use", None,
        id="empty-arguments-and-finish-stop-with-tools",
    ),
    pytest.param(
        completion({"content": "", "reasoning_content": "thinking...", "tool_calls": [call("c", "T", '{"a": 1}')]}, "tool_calls"),
        {},
        [
            {"type": "thinking", "thinking": "thinking...", "signature": SYNTHETIC_SIGNATURE},
            {"type": "tool_use", "id": "c", "name": "T", "input": {"a": 1}},
        ],
        "tool_use", None,
        id="reasoning-content-first",
    ),
    pytest.param(
        completion({"content": "ok", "reasoning": "r"}),
        {},
        [{"type": "thinking", "thinking": "r", "signature": SYNTHETIC_SIGNATURE}, {"type": "text", "text": "ok"}],
        "end_turn", None,
        id="reasoning-field",
    ),
    pytest.param(
        completion({"content": "ok", "reasoning_content": "r", "thinking_blocks": [
            {"type": "thinking", "thinking": "r", "signature": "EqRealSig"},
            {"type": "redacted_thinking", "data": "opaque"},
        ]}),
        {},
        [
            {"type": "thinking", "thinking": "r", "signature": "EqRealSig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "ok"},
        ],
        "end_turn", None,
        id="litellm-thinking-blocks-with-signatures",
    ),
    pytest.param(
        completion({"content": "cut"}, "length"),
        {},
        [{"type": "text", "text": "cut"}],
        "max_tokens", None,
        id="length",
    ),
    pytest.param(
        completion({"content": "1 2 3"}, "stop", stop_reason="END"),
        {"stop_sequences": ["END"]},
        [{"type": "text", "text": "1 2 3"}],
        "stop_sequence", "END",
        id="stop-sequence-reported-vllm-style",
    ),
    pytest.param(
        completion({"content": "1 2 3 END"}),
        {"stop_sequences": ["STOP", "END"]},
        [{"type": "text", "text": "1 2 3 "}],
        "stop_sequence", "END",
        id="stop-sequence-left-in-text-is-removed",
    ),
    pytest.param(
        completion({"content": "1 2 3"}),
        {"stop_sequences": ["END"]},
        [{"type": "text", "text": "1 2 3"}],
        "end_turn", None,
        id="plain-openai-stop-is-end-turn",
    ),
    pytest.param(
        completion({"content": None, "refusal": "I can't help with that."}),
        {},
        [{"type": "text", "text": "I can't help with that."}],
        "refusal", None,
        id="refusal",
    ),
    pytest.param(
        completion({"content": "filtered"}, "content_filter"),
        {},
        [{"type": "text", "text": "filtered"}],
        "refusal", None,
        id="content-filter",
    ),
    pytest.param(
        completion({"content": [{"type": "text", "text": "part1 "}, {"type": "text", "text": "part2"}]}),
        {},
        [{"type": "text", "text": "part1 part2"}],
        "end_turn", None,
        id="content-as-parts",
    ),
    pytest.param(
        completion({"content": None, "function_call": {"name": "legacy", "arguments": '{"x": 1}'}}, "function_call"),
        {},
        [{"type": "tool_use", "id": "*", "name": "legacy", "input": {"x": 1}}],
        "tool_use", None,
        id="legacy-function-call",
    ),
    pytest.param(
        completion({"content": None, "tool_calls": [call(None, "NoId", "{}")]}, "tool_calls"),
        {},
        [{"type": "tool_use", "id": "*", "name": "NoId", "input": {}}],
        "tool_use", None,
        id="missing-call-id-generated",
    ),
    pytest.param(
        {"id": "x", "choices": []},
        {},
        [],
        "end_turn", None,
        id="no-choices",
    ),
]


@pytest.mark.parametrize("resp, kw, content, stop_reason, stop_sequence", CASES)
def test_openai_to_anthropic(resp, kw, content, stop_reason, stop_sequence):
    msg = openai_to_anthropic(resp, model="claude-sonnet-4-5", **kw)
    got = msg["content"]
    assert len(got) == len(content), got
    for g, e in zip(got, content):
        if e.get("id") == "*":
            assert g["id"].startswith("toolu_") and len(g["id"]) == 30
            e = {**e, "id": g["id"]}
        assert g == e
    assert msg["stop_reason"] == stop_reason
    assert msg["stop_sequence"] == stop_sequence
    assert msg["model"] == "claude-sonnet-4-5"
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["id"].startswith("msg_") and len(msg["id"]) == 28
    # The official SDK's model accepts it as a Message.
    Message.model_validate(msg)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, {}),
        ("", {}),
        ("   ", {}),
        ('{"a": 1}', {"a": 1}),
        ({"a": 1}, {"a": 1}),
        ('"{\\"a\\": 1}"', {"a": 1}),  # double-encoded
        ('{"path": "/a", "content": "half', {"path": "/a"}),  # truncated: unfinished string dropped
        ('{"a": 1, "b": [1, 2', {"a": 1, "b": [1, 2]}),
        ("not json", {"_raw_arguments": "not json"}),
        ("[1, 2]", {"_raw_arguments": "[1, 2]"}),
        ('"just a string"', {"_raw_arguments": '"just a string"'}),
    ],
)
def test_parse_tool_arguments(raw, expected):
    assert parse_tool_arguments(raw) == expected


@pytest.mark.parametrize(
    "usage, expected",
    [
        (None, {"input_tokens": 0, "output_tokens": 0}),
        ({"prompt_tokens": 100, "completion_tokens": 7}, {"input_tokens": 100, "output_tokens": 7}),
        (
            {"prompt_tokens": 1000, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 900}},
            {"input_tokens": 100, "output_tokens": 7, "cache_read_input_tokens": 900},
        ),
        (
            {"prompt_tokens": 1000, "completion_tokens": 7, "cache_read_input_tokens": 600, "cache_creation_input_tokens": 300,
             "prompt_tokens_details": {"cached_tokens": 600}},
            {"input_tokens": 100, "output_tokens": 7, "cache_read_input_tokens": 600, "cache_creation_input_tokens": 300},
        ),
        ({"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}, {"input_tokens": 5, "output_tokens": 1}),
    ],
)
def test_map_usage(usage, expected):
    assert map_usage(usage) == expected


def test_given_message_id_and_synthetic_signature_marker():
    msg = openai_to_anthropic(completion({"content": "x"}), model="m", message_id="msg_fixed")
    assert msg["id"] == "msg_fixed"
    assert is_synthetic_signature(SYNTHETIC_SIGNATURE) and not is_synthetic_signature("EqRealSig")


def test_drop_synthetic_thinking_for_anthropic_passthrough():
    from translator.convert.anthropic_body import drop_synthetic_thinking

    real = {"type": "thinking", "thinking": "signed", "signature": "EqRealSig"}
    fake = {"type": "thinking", "thinking": "from an OpenAI backend", "signature": SYNTHETIC_SIGNATURE}
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [fake, {"type": "text", "text": "a"}]},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": [real, {"type": "text", "text": "b"}]},
        ],
    }
    out, n = drop_synthetic_thinking(body)
    assert n == 1
    assert out["messages"][1]["content"] == [{"type": "text", "text": "a"}]
    assert out["messages"][3]["content"][0] == real
    assert body["messages"][1]["content"][0] == fake  # input untouched
    same, n0 = drop_synthetic_thinking(out)
    assert same is out and n0 == 0
    only_thinking = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [fake]}, {"role": "user", "content": "q2"}]}
    out2, n2 = drop_synthetic_thinking(only_thinking)
    assert n2 == 1 and [m["role"] for m in out2["messages"]] == ["user", "user"]
