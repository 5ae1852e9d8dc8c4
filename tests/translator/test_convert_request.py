"""Anthropic Messages request -> OpenAI chat completions body (translator.convert.openai_request)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from translator.convert.openai_request import BackendCaps, anthropic_to_openai, reasoning_effort_for
from translator.convert.schema_clean import clean_schema_for_gemini
from translator.schemas.anthropic import CountTokensRequest, MessagesRequest, describe_validation_error

FIXTURE = Path(__file__).parent / "fixtures" / "claude_code_request.json"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def body(messages: list[dict] | None = None, **extra: Any) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": messages or [user("hi")], **extra}


def user(content: Any) -> dict:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict:
    return {"role": "assistant", "content": content}


def convert(b: dict, **caps: Any) -> tuple[dict, list[str]]:
    notes: list[str] = []
    out = anthropic_to_openai(MessagesRequest.model_validate(b), model="backend-model", caps=BackendCaps(**caps), notes=notes)
    check_openai_messages(out["messages"])
    json.dumps(out)  # plain JSON-serializable dicts only
    return out, notes


def check_openai_messages(messages: list[dict]) -> None:
    """What OpenAI enforces: every assistant tool_calls message is followed directly by one tool message per
    call id (any order), and tool messages appear nowhere else."""
    i = 0
    while i < len(messages):
        m = messages[i]
        assert m["role"] in {"system", "developer", "user", "assistant", "tool"}
        if m["role"] == "tool":
            raise AssertionError(f"tool message without a preceding tool call at {i}")
        i += 1
        if m["role"] == "assistant" and m.get("tool_calls") and i < len(messages):
            ids = {c["id"] for c in m["tool_calls"]}
            seen = set()
            while i < len(messages) and messages[i]["role"] == "tool":
                assert messages[i]["tool_call_id"] in ids
                seen.add(messages[i]["tool_call_id"])
                i += 1
            assert seen == ids, f"missing tool results for {ids - seen}"


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a", "n": 1}}
TOOL_USE_2 = {"type": "tool_use", "id": "toolu_2", "name": "Glob", "input": {"pattern": "*.py"}}


# ------------------------------------------------------------------------------------ messages, table-driven

MESSAGE_CASES = [
    pytest.param(
        body(system="Be brief."),
        {},
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        id="system-string",
    ),
    pytest.param(
        body(system=[
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ]),
        {},
        [{"role": "system", "content": "You are Claude Code.\n\nRules."}, {"role": "user", "content": "hi"}],
        id="system-blocks-joined-cache-control-dropped",
    ),
    pytest.param(
        body([user("a"), assistant("b"), {"role": "system", "content": "mode changed"}, user("c")]),
        {},
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "system", "content": "mode changed"},
            {"role": "user", "content": "c"},
        ],
        id="mid-conversation-system",
    ),
    pytest.param(
        body([user("a"), {"role": "system", "content": [{"type": "text", "text": "x"}]}]),
        {"system_role": "developer"},
        [{"role": "user", "content": "a"}, {"role": "developer", "content": "x"}],
        id="mid-conversation-system-as-developer",
    ),
    pytest.param(
        body([user([{"type": "text", "text": "<system-reminder>r</system-reminder>"}, {"type": "text", "text": "question", "cache_control": {"type": "ephemeral"}}])]),
        {},
        [{"role": "user", "content": "<system-reminder>r</system-reminder>\n\nquestion"}],
        id="user-text-blocks-joined",
    ),
    pytest.param(
        body([user([
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        ])]),
        {},
        [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        ]}],
        id="images-base64-and-url",
    ),
    pytest.param(
        body([user([
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, "title": "spec"},
            {"type": "text", "text": "summarize"},
        ])]),
        {"pdf_file_parts": True},
        [{"role": "user", "content": [
            {"type": "file", "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "text", "text": "summarize"},
        ]}],
        id="pdf-as-file-part",
    ),
    pytest.param(
        body([user([
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "text", "text": "summarize"},
        ])]),
        {},
        [{"role": "user", "content": "summarize"}],
        id="pdf-dropped-without-file-parts",
    ),
    pytest.param(
        body([user([
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "line 1"}, "title": "notes.txt", "context": "from the wiki"},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "c1"}, {"type": "text", "text": "c2"}]}},
            {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
            {"type": "text", "text": "compare"},
        ])]),
        {},
        [{"role": "user", "content":
            '<document title="notes.txt">\n<context>from the wiki</context>\nline 1\n</document>\n\n'
            '<document title="document">\nc1\nc2\n</document>\n\ncompare'}],
        id="text-documents-inlined-url-document-dropped",
    ),
    pytest.param(
        body([user("read a"), assistant([{"type": "text", "text": "Reading."}, TOOL_USE])]),
        {},
        [
            {"role": "user", "content": "read a"},
            {"role": "assistant", "content": "Reading.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/a","n":1}'}},
            ]},
        ],
        id="assistant-tool-use-to-tool-calls",
    ),
    pytest.param(
        body([
            user("go"),
            assistant([TOOL_USE, TOOL_USE_2]),
            user([
                {"type": "text", "text": "also check tests"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "a.py\nb.py"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
            ]),
        ]),
        {},
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/a","n":1}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "Glob", "arguments": '{"pattern":"*.py"}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "x\n\ny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "a.py\nb.py"},
            {"role": "user", "content": "also check tests"},
        ],
        id="tool-results-in-call-order-before-user-text",
    ),
    pytest.param(
        body([
            user("go"),
            assistant([TOOL_USE]),
            user([{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": "No such file"}]),
        ]),
        {},
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/a","n":1}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: No such file"},
        ],
        id="is-error-prefixed",
    ),
    pytest.param(
        body([
            user("shot"),
            assistant([TOOL_USE]),
            user([
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "screenshot:"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                ]},
                {"type": "text", "text": "what do you see?"},
            ]),
        ]),
        {},
        [
            {"role": "user", "content": "shot"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/a","n":1}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1",
             "content": "screenshot:\n\n[image returned by tool call toolu_1: attached in the next user message]"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "what do you see?"},
            ]},
        ],
        id="tool-result-image-moves-to-next-user-message",
    ),
    pytest.param(
        body([
            user("q"),
            assistant([
                {"type": "thinking", "thinking": "secret chain", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "answer"},
            ]),
            user("next"),
        ]),
        {},
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer"}, {"role": "user", "content": "next"}],
        id="thinking-dropped",
    ),
    pytest.param(
        body([
            user("q"),
            assistant([
                {"type": "thinking", "thinking": "chain", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "answer"},
            ]),
        ]),
        {"reasoning_content_input": True},
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer", "reasoning_content": "chain"}],
        id="thinking-as-reasoning-content",
    ),
    pytest.param(
        body([
            user([{"type": "text", "text": "a"}, {"type": "mystery_block", "payload": 1}]),
            assistant([
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [{"type": "web_search_result", "url": "u", "title": "t", "encrypted_content": "e"}]},
                {"type": "text", "text": "found"},
            ]),
        ]),
        {},
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "found"}],
        id="unknown-and-server-tool-blocks-dropped",
    ),
    pytest.param(
        body([
            user("search"),
            assistant([TOOL_USE]),
            user([
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "search_result", "source": "https://kb/1", "title": "Doc 1",
                     "content": [{"type": "text", "text": "fact one"}], "citations": {"enabled": True}},
                ]},
                {"type": "search_result", "source": "s2", "title": "T2", "content": [{"type": "text", "text": "fact two"}]},
            ]),
        ]),
        {},
        [
            {"role": "user", "content": "search"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/a","n":1}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1",
             "content": '<search_result source="https://kb/1" title="Doc 1">\nfact one\n</search_result>'},
            {"role": "user", "content": '<search_result source="s2" title="T2">\nfact two\n</search_result>'},
        ],
        id="search-result-blocks-inlined",
    ),
    pytest.param(
        body([
            user("go"),
            assistant("no tool call here"),
            user([{"type": "tool_result", "tool_use_id": "toolu_gone", "content": "stale", "is_error": True},
                  {"type": "text", "text": "continue"}]),
        ]),
        {},
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "no tool call here"},
            {"role": "user", "content": "[result of tool call toolu_gone]\nError: stale\n\ncontinue"},
        ],
        id="orphan-tool-result-becomes-text",
    ),
    pytest.param(
        body([
            user("go"),
            assistant([TOOL_USE]),
            {"role": "system", "content": "permission mode changed"},
            user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}, {"type": "text", "text": "next"}]),
        ]),
        {},
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/a","n":1}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"},
            {"role": "system", "content": "permission mode changed"},
            {"role": "user", "content": "next"},
        ],
        id="system-between-tool-calls-and-results-waits",
    ),
    pytest.param(
        body([user("q"), assistant([{"type": "thinking", "thinking": "only thinking", "signature": "s"}]), user("again")]),
        {},
        [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}],
        id="assistant-with-only-thinking-skipped",
    ),
]


@pytest.mark.parametrize("b, caps, expected", MESSAGE_CASES)
def test_messages(b, caps, expected):
    out, _ = convert(b, **caps)
    assert out["messages"] == expected


@pytest.mark.parametrize(
    "b, caps, note",
    [
        (body([user([{"type": "mystery_block"}])]), {}, "dropped unknown content block 'mystery_block'"),
        (body([user([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "x"}}])]), {},
         "dropped application/pdf document (backend takes no file parts)"),
        (body([user([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}])]), {}, "dropped image with source type 'file'"),
        (body(context_management={"edits": []}), {}, "dropped request field 'context_management'"),
        (body(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]), {}, "dropped server tool 'web_search' (type 'web_search_20250305'): the backend has no equivalent"),
        (body(thinking={"type": "enabled", "budget_tokens": 2048}), {}, "dropped thinking (backend has no reasoning controls)"),
        (body(top_k=5), {}, "dropped top_k"),
    ],
)
def test_notes_name_what_was_dropped(b, caps, note):
    _, notes = convert(b, **caps)
    assert note in notes


# ------------------------------------------------------------------------------------ parameters, table-driven

PARAM_CASES = [
    pytest.param(body(), {}, {"max_tokens": 1024}, {"stream", "stream_options", "tools", "tool_choice", "user", "stop"}, id="defaults"),
    pytest.param(body(max_tokens=64000), {"max_output_tokens": 16384}, {"max_tokens": 16384}, set(), id="max-tokens-capped"),
    pytest.param(body(max_tokens=500), {"max_output_tokens": 16384}, {"max_tokens": 500}, set(), id="max-tokens-under-cap"),
    pytest.param(body(max_tokens=500), {"use_max_completion_tokens": True}, {"max_completion_tokens": 500}, {"max_tokens"}, id="max-completion-tokens"),
    pytest.param(body(stream=True), {}, {"stream": True, "stream_options": {"include_usage": True}}, set(), id="stream"),
    pytest.param(body(stop_sequences=["a", "b"]), {}, {"stop": ["a", "b"]}, set(), id="stop"),
    pytest.param(body(stop_sequences=list("abcdef")), {}, {"stop": list("abcd")}, set(), id="stop-capped-at-4"),
    pytest.param(body(stop_sequences=list("abcdef")), {"max_stop_sequences": None}, {"stop": list("abcdef")}, set(), id="stop-unlimited"),
    pytest.param(body(temperature=0.2, top_p=0.9), {}, {"temperature": 0.2, "top_p": 0.9}, set(), id="sampling"),
    pytest.param(body(temperature=1, top_p=0.9), {"sampling_params": False}, {}, {"temperature", "top_p"}, id="sampling-dropped"),
    pytest.param(body(top_k=40), {"top_k": True}, {"top_k": 40}, set(), id="top-k"),
    pytest.param(body(top_k=40), {}, {}, {"top_k"}, id="top-k-dropped"),
    pytest.param(body(metadata={"user_id": "user_abc_session_1"}), {}, {"user": "user_abc_session_1"}, set(), id="user"),
    pytest.param(body(metadata={"user_id": "u"}), {"user": False}, {}, {"user"}, id="user-dropped"),
    pytest.param(body(thinking={"type": "enabled", "budget_tokens": 1024}), {"reasoning_effort": True}, {"reasoning_effort": "low"}, set(), id="thinking-low"),
    pytest.param(body(thinking={"type": "enabled", "budget_tokens": 10000}), {"reasoning_effort": True}, {"reasoning_effort": "medium"}, set(), id="thinking-medium"),
    pytest.param(body(thinking={"type": "enabled", "budget_tokens": 31999}), {"reasoning_effort": True}, {"reasoning_effort": "high"}, set(), id="thinking-high"),
    pytest.param(body(thinking={"type": "adaptive"}), {"reasoning_effort": True, "adaptive_reasoning_effort": "high"}, {"reasoning_effort": "high"}, set(), id="thinking-adaptive"),
    pytest.param(body(thinking={"type": "disabled"}), {"reasoning_effort": True}, {}, {"reasoning_effort"}, id="thinking-disabled"),
    pytest.param(body(thinking={"type": "enabled", "budget_tokens": 5000}), {}, {}, {"reasoning_effort"}, id="thinking-no-reasoning-controls"),
]


@pytest.mark.parametrize("b, caps, present, absent", PARAM_CASES)
def test_parameters(b, caps, present, absent):
    out, _ = convert(b, **caps)
    assert out["model"] == "backend-model"
    for k, v in present.items():
        assert out[k] == v, k
    for k in absent:
        assert k not in out, k


@pytest.mark.parametrize("budget, effort", [(None, "medium"), (0, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high")])
def test_reasoning_effort_thresholds(budget, effort):
    assert reasoning_effort_for(budget) == effort


# ------------------------------------------------------------------------------------ tools

READ_TOOL = {
    "name": "Read",
    "description": "Reads a file",
    "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"], "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"},
    "cache_control": {"type": "ephemeral"},
}


@pytest.mark.parametrize(
    "tool_choice, caps, expected_choice, expected_parallel",
    [
        (None, {}, None, None),
        ({"type": "auto"}, {}, "auto", None),
        ({"type": "any"}, {}, "required", None),
        ({"type": "none"}, {}, "none", None),
        ({"type": "tool", "name": "Read"}, {}, {"type": "function", "function": {"name": "Read"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, {}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, {"parallel_tool_calls": False}, "required", None),
    ],
)
def test_tool_choice(tool_choice, caps, expected_choice, expected_parallel):
    extra = {"tools": [READ_TOOL]}
    if tool_choice is not None:
        extra["tool_choice"] = tool_choice
    out, _ = convert(body(**extra), **caps)
    assert out.get("tool_choice") == expected_choice
    assert out.get("parallel_tool_calls") == expected_parallel


def test_tools_to_functions_and_server_tools_dropped():
    out, notes = convert(body(tools=[
        READ_TOOL,
        {"name": "NoArgs", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "Typed", "input_schema": {"type": "object", "properties": {}}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "bash_20250124", "name": "bash"},
    ], tool_choice={"type": "auto"}))
    assert out["tools"] == [
        {"type": "function", "function": {"name": "Read", "description": "Reads a file", "parameters": READ_TOOL["input_schema"]}},
        {"type": "function", "function": {"name": "NoArgs", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "Typed", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert any(n.startswith("dropped server tool 'bash' (type 'bash_20250124')") for n in notes)


def test_tool_choice_without_remaining_tools_is_not_sent():
    out, notes = convert(body(tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "any"}))
    assert "tools" not in out and "tool_choice" not in out
    assert "dropped tool_choice (no tool left for this backend)" in notes


# ------------------------------------------------------------------------------------ Gemini schema cleaning

GEMINI_CASES = [
    pytest.param(
        {"type": "object", "$schema": "x", "additionalProperties": False, "properties": {"a": {"type": "string", "default": "d", "format": "uri"}}, "required": ["a"]},
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        id="strip-schema-additional-default-format",
    ),
    pytest.param(
        {"type": "object", "properties": {"t": {"type": "string", "format": "date-time"}, "e": {"type": "string", "format": "enum", "enum": ["a"]}}},
        {"type": "object", "properties": {"t": {"type": "string", "format": "date-time"}, "e": {"type": "string", "format": "enum", "enum": ["a"]}}},
        id="keep-date-time-and-enum-format",
    ),
    pytest.param(
        {"type": "object", "properties": {"x": {"type": ["string", "null"]}, "y": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}},
        {"type": "object", "properties": {"x": {"type": "string", "nullable": True}, "y": {"type": "integer", "nullable": True}}},
        id="nullable",
    ),
    pytest.param(
        {"type": "object", "properties": {"k": {"const": "fixed"}}},
        {"type": "object", "properties": {"k": {"type": "string", "enum": ["fixed"]}}},
        id="const-to-enum",
    ),
    pytest.param(
        {"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2], "exclusiveMinimum": 0}}},
        {"type": "object", "properties": {"n": {"type": "integer", "description": "one of: 1, 2"}}},
        id="non-string-enum-to-description",
    ),
    pytest.param(
        {"type": "object", "$defs": {"P": {"type": "object", "properties": {"x": {"type": "number"}}}}, "properties": {"p": {"$ref": "#/$defs/P"}}},
        {"type": "object", "properties": {"p": {"type": "object", "properties": {"x": {"type": "number"}}}}},
        id="ref-inlined",
    ),
    pytest.param(
        {"type": "object", "properties": {}, "required": []},
        {"type": "object"},
        id="empty-properties-removed",
    ),
    pytest.param(
        {"type": "object", "properties": {"l": {"type": "array"}, "m": {"type": "object", "additionalProperties": {"type": "string"}}}, "required": ["l", "gone"]},
        {"type": "object", "properties": {"l": {"type": "array", "items": {"type": "string"}}, "m": {"type": "object"}}, "required": ["l"]},
        id="array-items-and-required-filtered",
    ),
    pytest.param(
        {"type": "object", "properties": {"v": {"oneOf": [{"type": "string"}, {"type": "number"}]}}},
        {"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"type": "number"}]}}},
        id="oneof-as-anyof",
    ),
]


@pytest.mark.parametrize("schema, expected", GEMINI_CASES)
def test_gemini_schema_cleaning(schema, expected):
    before = json.dumps(schema, sort_keys=True)
    assert clean_schema_for_gemini(schema) == expected
    assert json.dumps(schema, sort_keys=True) == before  # input not mutated


def test_recursive_ref_is_bounded():
    schema = {"type": "object", "$defs": {"N": {"type": "object", "properties": {"child": {"$ref": "#/$defs/N"}}}}, "properties": {"root": {"$ref": "#/$defs/N"}}}
    out = clean_schema_for_gemini(schema)
    assert "$ref" not in json.dumps(out)


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "b, expected_parts",
    [
        ({}, ["model: field required", "messages: field required", "max_tokens: field required"]),
        (body(max_tokens="sk-live-SECRET"), ["max_tokens: "]),
        (body([{"role": "robot", "content": "sk-live-SECRET"}]), ["messages[0].role: "]),
        (body([user([{"type": "text"}])]), ["messages[0].content[0].text: field required"]),
        (body([user([{"type": "image", "source": {"type": "base64", "data": "sk-live-SECRET"}}])]), ["messages[0].content[0].source.media_type: field required"]),
        (body(tool_choice={"type": "tool"}), ['tool_choice: Value error, tool_choice of type "tool" needs a name']),
        (body(max_tokens=0), ["max_tokens: "]),
    ],
)
def test_validation_errors_are_short_and_never_echo_input(b, expected_parts):
    with pytest.raises(ValidationError) as exc:
        MessagesRequest.model_validate(b)
    msg = describe_validation_error(exc.value)
    for part in expected_parts:
        assert part in msg, msg
    assert "SECRET" not in msg and len(msg) < 1000


@pytest.mark.parametrize(
    "extra",
    [
        {"context_management": {"edits": [{"type": "clear_thinking_20251015"}]}},
        {"output_config": {"effort": "high"}},
        {"service_tier": "auto", "container": "c", "mcp_servers": [{"type": "url", "url": "u", "name": "n"}]},
        {"messages": [user([{"type": "brand_new_block", "x": 1}, {"type": "text", "text": "t", "citations": None, "future": 1}])]},
        {"tools": [{"name": "t", "input_schema": {"type": "object"}, "strict": True, "defer_loading": False}]},
        {"thinking": {"type": "enabled", "budget_tokens": 2048, "display": "x"}},
    ],
)
def test_unknown_fields_never_fail(extra):
    MessagesRequest.model_validate(body(**extra))


def test_count_tokens_request_needs_no_max_tokens():
    req = CountTokensRequest.model_validate({"model": "m", "messages": [user("hi")], "tools": [READ_TOOL], "system": "s"})
    assert req.tools[0].name == "Read"
    with pytest.raises(ValidationError):
        CountTokensRequest.model_validate({"model": "m"})


# ------------------------------------------------------------------------------------ Claude Code fixture


@pytest.fixture(scope="module")
def claude_code_body() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_claude_code_fixture_shape(claude_code_body):
    assert 60_000 <= FIXTURE.stat().st_size <= 90_000
    req = MessagesRequest.model_validate(claude_code_body)
    assert len(req.tools) == 24 and req.thinking.type == "adaptive" and req.stream
    assert req.dropped_fields() == ["context_management", "output_config"]
    assert any(m.role == "system" for m in req.messages)


@pytest.mark.parametrize(
    "caps",
    [
        {},
        {"gemini_schema": True, "top_k": True, "pdf_file_parts": True, "max_stop_sequences": 5},
        {"reasoning_effort": True, "use_max_completion_tokens": True, "sampling_params": False, "max_output_tokens": 32000},
        {"reasoning_content_input": True},
    ],
)
def test_claude_code_request_converts(claude_code_body, caps):
    out, notes = convert(claude_code_body, **caps)
    text = json.dumps(out)
    msgs = out["messages"]
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("You are Claude Code")
    assert len(out["tools"]) == 24
    assert "cache_control" not in text and "ephemeral" not in text
    assert "ErUBCkYIBxgCIkB" not in text  # thinking signatures never leak
    assert "EmwKAhgBEgy3va3" not in text  # redacted thinking never leaks
    roles = [m["role"] for m in msgs]
    # mid-conversation system message kept at its position: after the user turn holding the last tool results
    sys_at = roles.index("system", 1)
    assert msgs[sys_at]["content"].startswith("<system-reminder>The user changed")
    assert roles[sys_at - 1] == "user" and roles[sys_at + 1] == "assistant"
    # is_error result prefixed; image from a tool result moved to the following user message
    tool_msgs = [m for m in msgs if m["role"] == "tool"]
    assert len(tool_msgs) == 5
    assert any(m["content"].startswith("Error: Exit code 1") for m in tool_msgs)
    after = msgs[max(i for i, r in enumerate(roles) if r == "tool") + 1]
    assert after["role"] == "user" and after["content"][0]["type"] == "image_url"
    assert after["content"][1] == {"type": "text", "text": "The module path is wrong, use the src layout."}
    assert "dropped request field 'context_management'" in notes
    if caps.get("gemini_schema"):
        for forbidden in ('"$schema"', '"additionalProperties"', '"default"', '"exclusiveMinimum"', '"format": "uri"', '"$ref"'):
            assert forbidden not in json.dumps(out["tools"]), forbidden
    if caps.get("reasoning_effort"):
        assert out["reasoning_effort"] == "medium"
        assert out["max_completion_tokens"] == 32000
        assert "temperature" not in out
    if caps.get("reasoning_content_input"):
        assert any(m.get("reasoning_content", "").startswith("The user wants a docstring") for m in msgs)
    else:
        assert "The user wants a docstring" not in text


LONG_USER = "user_" + "a" * 64 + "_account__session_0b6c2f4e-8a51-4d3e-9c1e-2f7a5b9d3c10"


@pytest.mark.parametrize(
    "caps, check",
    [
        ({}, lambda u: len(u) == 64 and u.startswith("user-sha256-") and u != LONG_USER[:64]),
        ({"max_user_length": 128}, lambda u: u == LONG_USER),
        ({"max_user_length": None}, lambda u: u == LONG_USER),
    ],
)
def test_long_user_id_sent_as_stable_hash(caps, check):
    out1, _ = convert(body(metadata={"user_id": LONG_USER}), **caps)
    out2, _ = convert(body(metadata={"user_id": LONG_USER}), **caps)
    assert check(out1["user"]) and out1["user"] == out2["user"]
    other, _ = convert(body(metadata={"user_id": LONG_USER + "x"}), **caps)
    assert other["user"] != out1["user"]


def test_long_tool_call_ids_shortened_consistently():
    long_a, long_b = "call_" + "x" * 60, "call_" + "y" * 60
    out, notes = convert(body([
        user("go"),
        assistant([{**TOOL_USE, "id": long_a}, {**TOOL_USE_2, "id": long_b}]),
        user([
            {"type": "tool_result", "tool_use_id": long_b, "content": "B"},
            {"type": "tool_result", "tool_use_id": long_a, "content": "A"},
        ]),
    ]))
    calls = out["messages"][1]["tool_calls"]
    assert all(len(c["id"]) <= 40 for c in calls) and calls[0]["id"] != calls[1]["id"]
    tools = out["messages"][2:4]
    assert [t["tool_call_id"] for t in tools] == [c["id"] for c in calls]  # call order kept
    assert [t["content"] for t in tools] == ["A", "B"]
    assert "shortened tool call ids longer than the backend takes (x4)" in notes


def test_long_tool_names_shortened_and_mapped_back():
    from translator.convert.openai_request import tool_name_map
    from translator.convert.openai_response import openai_to_anthropic
    from translator.convert.openai_stream import OpenAIStreamConverter

    long_name = "mcp__plugin_enterprise_knowledge_base__search_documents_by_semantic_similarity"
    b = body(
        [user("go"), assistant([{"type": "tool_use", "id": "toolu_1", "name": long_name, "input": {}}]),
         user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}])],
        tools=[READ_TOOL, {"name": long_name, "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": long_name},
    )
    out, _ = convert(b)
    short = out["tools"][1]["function"]["name"]
    assert len(short) == 64 and short != long_name[:64]
    assert out["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert out["tool_choice"] == {"type": "function", "function": {"name": short}}
    names = tool_name_map(MessagesRequest.model_validate(b), BackendCaps())
    assert names == {short: long_name}

    resp = {"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"name": short, "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]}
    assert openai_to_anthropic(resp, model="m", tool_names=names)["content"][0]["name"] == long_name
    conv = OpenAIStreamConverter(model="m", tool_names=names)
    events = conv.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": short, "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]})
    starts = [d for n, d in events if n == "content_block_start"]
    assert starts[0]["content_block"]["name"] == long_name


def test_claude_code_fixture_matches_its_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_claude_code_request", FIXTURE.parent / "make_claude_code_request.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert json.loads(FIXTURE.read_text(encoding="utf-8")) == mod.build()
