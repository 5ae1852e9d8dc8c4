"""Usage extraction (translator/usage.py), table-driven from the usage shapes the vendors document: OpenAI chat
completions (prompt caching, reasoning models, the final stream chunk), Anthropic Messages (prompt caching with
and without the per-TTL `cache_creation` breakdown, message_start + cumulative message_delta), and LiteLLM's
own `Usage` objects (built with the installed LiteLLM, as its providers produce them)."""

from __future__ import annotations

import json

import pytest

from translator.usage import (MAX_TOKENS, Usage, anthropic_content_chars, estimate, from_anthropic, from_openai,
                              merge_anthropic_stream, sse_event_data)

OPENAI_CASES = [
    ("plain chat completion",
     {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                    "rejected_prediction_tokens": 0}},
     Usage(input=19, output=10)),
    ("prompt caching: cached tokens are part of prompt_tokens",
     {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
      "prompt_tokens_details": {"cached_tokens": 1920}, "completion_tokens_details": {"reasoning_tokens": 0}},
     Usage(input=86, output=300, cache_read=1920)),
    ("reasoning model: reasoning tokens are part of completion_tokens",
     {"prompt_tokens": 9, "completion_tokens": 1843, "total_tokens": 1852,
      "completion_tokens_details": {"reasoning_tokens": 1024}},
     Usage(input=9, output=1843, reasoning=1024)),
    ("minimal gateway usage (no details)",
     {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
     Usage(input=11, output=7)),
    ("LiteLLM proxy in front of Anthropic: cache fields at the top level",
     {"prompt_tokens": 130, "completion_tokens": 50, "total_tokens": 180, "cache_read_input_tokens": 10,
      "cache_creation_input_tokens": 20},
     Usage(input=100, output=50, cache_read=10, cache_write=20)),
    ("cache writes only in prompt_tokens_details",
     {"prompt_tokens": 50, "completion_tokens": 1, "prompt_tokens_details": {"cache_write_tokens": 30}},
     Usage(input=20, output=1, cache_write=30)),
    ("only a completion count",
     {"completion_tokens": 4},
     Usage(output=4)),
    ("reasoning above the output is capped at the output",
     {"prompt_tokens": 1, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 9}},
     Usage(input=1, output=5, reasoning=5)),
    ("cache counts above the prompt leave no negative input",
     {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 9}},
     Usage(input=0, output=1, cache_read=9)),
    ("integral floats are counts",
     {"prompt_tokens": 12.0, "completion_tokens": 3.0},
     Usage(input=12, output=3)),
    ("hostile values count as nothing",
     {"prompt_tokens": "100", "completion_tokens": -5, "prompt_tokens_details": {"cached_tokens": True},
      "completion_tokens_details": {"reasoning_tokens": float("nan")}},
     Usage()),
    ("absurd values are capped",
     {"prompt_tokens": 10**15, "completion_tokens": 10**12},
     Usage(input=MAX_TOKENS, output=MAX_TOKENS)),
    ("details that are not objects are ignored",
     {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": [1], "completion_tokens_details": "x"},
     Usage(input=3, output=2)),
]


@pytest.mark.parametrize("usage,expected", [c[1:] for c in OPENAI_CASES], ids=[c[0] for c in OPENAI_CASES])
def test_openai_usage(usage, expected):
    assert from_openai(usage) == expected


@pytest.mark.parametrize("usage", [None, {}, [], "usage", 7, {"total_tokens": 5}, {"input_tokens": 3}])
def test_no_openai_usage_is_none(usage):
    assert from_openai(usage) is None


def test_openai_final_stream_chunk():
    """With stream_options.include_usage the last chunk has no choices and the usage of the whole request."""
    chunk = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190, "model": "gpt-4o-mini",
             "choices": [], "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
                                      "prompt_tokens_details": {"cached_tokens": 1024},
                                      "completion_tokens_details": {"reasoning_tokens": 0}}}
    assert from_openai(chunk["usage"]) == Usage(input=93, output=46, cache_read=1024)


ANTHROPIC_CASES = [
    ("plain message", {"input_tokens": 2095, "output_tokens": 503}, Usage(input=2095, output=503)),
    ("prompt caching (input_tokens exclude cache reads and writes)",
     {"input_tokens": 21, "cache_creation_input_tokens": 248, "cache_read_input_tokens": 1800, "output_tokens": 393},
     Usage(input=21, output=393, cache_read=1800, cache_write=248)),
    ("cache_creation breakdown alongside the total (the total counts once)",
     {"input_tokens": 10, "cache_creation_input_tokens": 556, "cache_read_input_tokens": 0, "output_tokens": 5,
      "cache_creation": {"ephemeral_5m_input_tokens": 456, "ephemeral_1h_input_tokens": 100},
      "service_tier": "standard", "server_tool_use": {"web_search_requests": 1}},
     Usage(input=10, output=5, cache_write=556)),
    ("cache_creation breakdown only",
     {"input_tokens": 10, "output_tokens": 5,
      "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 2}},
     Usage(input=10, output=5, cache_write=42)),
    ("null cache fields", {"input_tokens": 3, "output_tokens": 1, "cache_creation_input_tokens": None,
                           "cache_read_input_tokens": None}, Usage(input=3, output=1)),
    ("hostile values", {"input_tokens": "3", "output_tokens": -1, "cache_read_input_tokens": {}}, Usage()),
]


@pytest.mark.parametrize("usage,expected", [c[1:] for c in ANTHROPIC_CASES], ids=[c[0] for c in ANTHROPIC_CASES])
def test_anthropic_usage(usage, expected):
    assert from_anthropic(usage) == expected


@pytest.mark.parametrize("usage", [None, {}, {"prompt_tokens": 3}, ["input_tokens"]])
def test_no_anthropic_usage_is_none(usage):
    assert from_anthropic(usage) is None


STREAM_CASES = [
    ("output count only in message_delta (cumulative)",
     {"input_tokens": 25, "output_tokens": 1}, {"output_tokens": 15}, Usage(input=25, output=15)),
    ("cache counts from message_start",
     {"input_tokens": 4, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 1},
     {"output_tokens": 120}, Usage(input=4, output=120, cache_read=2000, cache_write=1000)),
    ("message_delta repeating every count (newer API versions) wins",
     {"input_tokens": 4, "output_tokens": 1},
     {"input_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7, "output_tokens": 9,
      "server_tool_use": None}, Usage(input=4, output=9, cache_read=7)),
    ("null fields in message_delta do not erase message_start's",
     {"input_tokens": 8, "cache_read_input_tokens": 3, "output_tokens": 1},
     {"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 2}, Usage(input=8, output=2,
                                                                                         cache_read=3)),
    ("stream cut before message_delta", {"input_tokens": 8, "output_tokens": 1}, None, Usage(input=8, output=1)),
    ("no message_start seen", None, {"output_tokens": 6}, Usage(output=6)),
]


@pytest.mark.parametrize("start,delta,expected", [c[1:] for c in STREAM_CASES], ids=[c[0] for c in STREAM_CASES])
def test_anthropic_stream_usage(start, delta, expected):
    assert merge_anthropic_stream(start, delta) == expected


def test_anthropic_stream_without_usage_is_none():
    assert merge_anthropic_stream(None, None) is None
    assert merge_anthropic_stream({}, {"stop_reason": "end_turn"}) is None


def _frames(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


SSE_CASES = [
    ("finds the event among others",
     _frames(("content_block_stop", {"type": "content_block_stop", "index": 0}),
             ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 15}}),
             ("message_stop", {"type": "message_stop"})),
     b"message_delta", {"type": "message_delta", "usage": {"output_tokens": 15}}),
    ("the last event, without a trailing blank line",
     b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":2}}", b"message_delta",
     {"usage": {"output_tokens": 2}}),
    ("absent", _frames(("ping", {"type": "ping"})), b"message_delta", None),
    ("not JSON", b"event: message_delta\ndata: {oops\n\n", b"message_delta", None),
    ("JSON that is not an object", b"event: message_delta\ndata: [1]\n\n", b"message_delta", None),
    ("no data line", b"event: message_delta\n\n", b"message_delta", None),
    ("a name that only starts the same", _frames(("message_delta_x", {"a": 1})), b"message_delta", None),
]


@pytest.mark.parametrize("frames,event,expected", [c[1:] for c in SSE_CASES], ids=[c[0] for c in SSE_CASES])
def test_sse_event_data(frames, event, expected):
    assert sse_event_data(frames, event) == expected


def test_litellm_usage_objects():
    """LiteLLM's own Usage type, as its Anthropic and OpenAI providers build it, object and model_dump alike."""
    from litellm.types.utils import Usage as LiteLLMUsage

    anthropic_like = LiteLLMUsage(prompt_tokens=130, completion_tokens=50, total_tokens=180,
                                  cache_creation_input_tokens=20, cache_read_input_tokens=10, reasoning_tokens=12)
    openai_like = LiteLLMUsage(prompt_tokens=100, completion_tokens=50, total_tokens=150,
                               prompt_tokens_details={"cached_tokens": 40},
                               completion_tokens_details={"reasoning_tokens": 7})
    for obj, expected in ((anthropic_like, Usage(input=100, output=50, cache_read=10, cache_write=20, reasoning=12)),
                          (openai_like, Usage(input=60, output=50, cache_read=40, reasoning=7))):
        assert from_openai(obj) == expected
        assert from_openai(obj.model_dump(exclude_none=True)) == expected


def test_an_object_that_cannot_be_dumped_has_no_usage():
    class Broken:
        def model_dump(self, **kw):
            raise RuntimeError("no")

    assert from_openai(Broken()) is None


@pytest.mark.parametrize("input_chars,output_chars,expected", [
    (0, 0, Usage(estimated=True)),
    (1, 4, Usage(input=1, output=1, estimated=True)),
    (400, 9, Usage(input=100, output=3, estimated=True)),
    (-5, -1, Usage(estimated=True)),
])
def test_estimate_is_marked(input_chars, output_chars, expected):
    assert estimate(input_chars, output_chars) == expected


def test_content_chars_of_a_message():
    msg = {"content": [{"type": "text", "text": "hello"}, {"type": "thinking", "thinking": "abc", "signature": "s"},
                       {"type": "tool_use", "id": "t", "name": "n", "input": {"a": 1}}, "junk"]}
    assert anthropic_content_chars(msg) == 5 + 3 + len('{"a":1}')
    assert anthropic_content_chars({}) == 0


def test_views_of_a_usage():
    u = Usage(input=1, output=2, cache_read=3, cache_write=4, reasoning=1)
    assert dict(u.counts()) == {"input": 1, "output": 2, "cache_read": 3, "cache_write": 4, "reasoning": 1}
    assert u.as_dict() == {"input": 1, "output": 2, "cache_read": 3, "cache_write": 4, "reasoning": 1,
                           "estimated": False}
    assert u.to_anthropic() == {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3,
                                "cache_creation_input_tokens": 4}
    assert Usage(input=1).to_anthropic() == {"input_tokens": 1, "output_tokens": 0}
