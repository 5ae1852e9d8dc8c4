"""OpenAI chunk streams -> Anthropic event streams: grammar checker + the official SDK's accumulator.

Each case feeds a recorded-style chunk sequence through OpenAIStreamConverter, checks the Anthropic event
grammar event by event, encodes the events with translator.sse, and lets the anthropic SDK (its Stream and
MessageStream classes over an HTTP response holding our bytes) rebuild the final message, which must equal the
expected one exactly (content blocks incl. tool inputs, stop_reason, stop_sequence, usage).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic._types import NOT_GIVEN
from anthropic.lib.streaming import MessageStream
from anthropic.types import RawMessageStreamEvent

from translator.convert.openai_response import SYNTHETIC_SIGNATURE
from translator.convert.openai_stream import OpenAIStreamConverter
from translator.sse import SSEDecoder, encode_event, encode_events

# ----------------------------------------------------------------------------------------- chunk builders


def chunk(delta: dict | None = None, finish: str | None = None, **choice_extra: Any) -> dict:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish, **choice_extra}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-x", "choices": [choice]}


def text(s: str) -> dict:
    return chunk({"content": s})


def role() -> dict:
    return chunk({"role": "assistant", "content": ""})


def reason(s: str, key: str = "reasoning_content") -> dict:
    return chunk({key: s})


def tc(index: int | None, id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    call: dict[str, Any] = {"type": "function", "function": {}}
    if index is not None:
        call["index"] = index
    if id is not None:
        call["id"] = id
    if name is not None:
        call["function"]["name"] = name
    if args is not None:
        call["function"]["arguments"] = args
    return chunk({"tool_calls": [call]})


def fin(reason: str = "stop", **extra: Any) -> dict:
    return chunk({}, reason, **extra)


def usage(prompt: int, completion: int, cached: int = 0) -> dict:
    u: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": u}


def T(s: str) -> dict:
    return {"type": "text", "text": s}


def TH(s: str, sig: str = SYNTHETIC_SIGNATURE) -> dict:
    return {"type": "thinking", "thinking": s, "signature": sig}


def TU(id: str, name: str, input: dict) -> dict:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


# ----------------------------------------------------------------------------------------- grammar checker

_DELTA_FOR = {
    "text": {"text_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


def check_grammar(events: list[tuple[str, dict]]) -> None:
    """Anthropic's stream grammar: message_start, blocks one at a time with consecutive indexes, deltas that fit
    their block, a signature before a thinking block closes, exactly one message_delta, message_stop last."""
    assert events, "no events"
    names = [n for n, _ in events]
    for name, data in events:
        assert data["type"] == name, (name, data)
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"
    assert names[-2] == "message_delta"
    assert names.count("message_start") == 1 and names.count("message_delta") == 1
    assert names.count("message_stop") == 1
    msg = events[0][1]["message"]
    assert msg["id"].startswith("msg_") and msg["content"] == [] and msg["stop_reason"] is None
    assert isinstance(msg["usage"]["input_tokens"], int)

    open_index: int | None = None
    open_type = ""
    next_index = 0
    signed = False
    json_buf = ""
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None, "a block is already open"
            assert data["index"] == next_index
            open_index, open_type = data["index"], data["content_block"]["type"]
            next_index += 1
            signed = False
            json_buf = ""
            if open_type == "tool_use":
                cb = data["content_block"]
                assert cb["input"] == {} and cb["id"] and cb["name"]
        elif name == "content_block_delta":
            assert data["index"] == open_index, "delta for a block that is not open"
            dtype = data["delta"]["type"]
            assert dtype in _DELTA_FOR[open_type], (open_type, dtype)
            if dtype == "signature_delta":
                signed = True
            elif dtype == "thinking_delta":
                assert not signed, "thinking after the signature"
            elif dtype == "input_json_delta":
                json_buf += data["delta"]["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            if open_type == "thinking":
                assert signed, "thinking block closed without signature_delta"
            if open_type == "tool_use" and json_buf:
                assert isinstance(json.loads(json_buf), dict)
            open_index = None
        elif name == "ping":
            pass
        else:
            raise AssertionError(f"unexpected event {name}")
    assert open_index is None, "block left open"
    md = events[-2][1]
    assert md["delta"]["stop_reason"] in {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"}
    assert isinstance(md["usage"]["output_tokens"], int)


# ----------------------------------------------------------------------------------------- SDK rebuild


def sdk_final_message(body: bytes) -> dict:
    resp = httpx2.Response(
        200,
        content=body,
        headers={"content-type": "text/event-stream"},
        request=httpx2.Request("POST", "http://127.0.0.1/v1/messages"),
    )
    client = anthropic.Anthropic(api_key="test", base_url="http://127.0.0.1")
    raw = anthropic.Stream(cast_to=RawMessageStreamEvent, response=resp, client=client)
    return MessageStream(raw, NOT_GIVEN).get_final_message().to_dict()


def run(chunks: list[dict], **kw: Any) -> tuple[list[tuple[str, dict]], dict]:
    kw.setdefault("model", "claude-sonnet-4-5")
    kw.setdefault("input_tokens", 42)
    conv = OpenAIStreamConverter(**kw)
    events: list[tuple[str, dict]] = []
    for c in chunks:
        events += conv.feed(c)
    events += conv.finish()
    check_grammar(events)
    return events, sdk_final_message(encode_events(events))


# ----------------------------------------------------------------------------------------- cases

CASES = [
    pytest.param(
        [role(), text("Hel"), text("lo, "), text("world"), fin("stop"), usage(20, 3)],
        {},
        [T("Hello, world")],
        "end_turn",
        None,
        {"input_tokens": 20, "output_tokens": 3},
        id="text-only",
    ),
    pytest.param(
        [role(), reason("Let me "), reason("think."), text("Answer"), text("."), fin("stop"), usage(10, 30)],
        {},
        [TH("Let me think."), T("Answer.")],
        "end_turn",
        None,
        {"input_tokens": 10, "output_tokens": 30},
        id="reasoning-then-text",
    ),
    pytest.param(
        [reason("hmm", key="reasoning"), text("ok"), fin("stop"), usage(5, 2)],
        {},
        [TH("hmm"), T("ok")],
        "end_turn",
        None,
        {"input_tokens": 5, "output_tokens": 2},
        id="reasoning-field-openrouter-style",
    ),
    pytest.param(
        [
            role(),
            text("I'll read it."),
            tc(0, id="call_abc", name="Read"),
            tc(0, args='{"file_'),
            tc(0, args='path": "/tmp/'),
            tc(0, args='a.txt"}'),
            fin("tool_calls"),
            usage(100, 20),
        ],
        {},
        [T("I'll read it."), TU("call_abc", "Read", {"file_path": "/tmp/a.txt"})],
        "tool_use",
        None,
        {"input_tokens": 100, "output_tokens": 20},
        id="single-tool-call-in-pieces",
    ),
    pytest.param(
        [tc(0, id="call_1", name="Bash", args='{"command": "ls -la", "timeout": 5}'), fin("tool_calls"), usage(9, 9)],
        {},
        [TU("call_1", "Bash", {"command": "ls -la", "timeout": 5})],
        "tool_use",
        None,
        {"input_tokens": 9, "output_tokens": 9},
        id="name-and-args-in-one-chunk",
    ),
    pytest.param(
        [
            tc(0, id="call_a", name="Read"),
            tc(1, id="call_b", name="Glob"),
            tc(0, args='{"file_path":'),
            tc(1, args='{"pattern":'),
            tc(1, args=' "**/*.py"}'),
            tc(0, args=' "/x.py"}'),
            fin("tool_calls"),
            usage(50, 12),
        ],
        {},
        [TU("call_a", "Read", {"file_path": "/x.py"}), TU("call_b", "Glob", {"pattern": "**/*.py"})],
        "tool_use",
        None,
        {"input_tokens": 50, "output_tokens": 12},
        id="two-parallel-calls-interleaved",
    ),
    pytest.param(
        [tc(0, args='{"q": '), tc(0, name="Search"), tc(0, args='"cats"}'), tc(0, id="call_late"), fin("tool_calls")],
        {},
        [TU("call_late", "Search", {"q": "cats"})],
        "tool_use",
        None,
        {"input_tokens": 42, "output_tokens": 4},
        id="args-before-name-and-late-id-no-usage",
    ),
    pytest.param(
        [
            text("First."),
            tc(0, id="call_1", name="Read", args='{"file_path": "/a"}'),
            text("Then more text."),
            fin("tool_calls"),
            usage(7, 7),
        ],
        {},
        [T("First."), TU("call_1", "Read", {"file_path": "/a"}), T("Then more text.")],
        "tool_use",
        None,
        {"input_tokens": 7, "output_tokens": 7},
        id="text-after-tool-call",
    ),
    pytest.param(
        [text("Hi"), fin("stop")],
        {},
        [T("Hi")],
        "end_turn",
        None,
        {"input_tokens": 42, "output_tokens": 1},
        id="no-usage-estimates-output",
    ),
    pytest.param(
        [text("1, 2, 3"), fin("stop", stop_reason="END"), usage(4, 5)],
        {"stop_sequences": ["END", "STOP"]},
        [T("1, 2, 3")],
        "stop_sequence",
        "END",
        {"input_tokens": 4, "output_tokens": 5},
        id="stop-sequence-reported-by-backend",
    ),
    pytest.param(
        [text("1, 2"), fin("stop", stop_reason=128001), usage(4, 5)],
        {"stop_sequences": ["END"]},
        [T("1, 2")],
        "end_turn",
        None,
        {"input_tokens": 4, "output_tokens": 5},
        id="eos-token-stop-reason-is-end-turn",
    ),
    pytest.param(
        [text("a long"), text(" answer"), fin("length"), usage(3, 8)],
        {},
        [T("a long answer")],
        "max_tokens",
        None,
        {"input_tokens": 3, "output_tokens": 8},
        id="length",
    ),
    pytest.param(
        [tc(0, id="call_1", name="Write", args='{"file_path": "/a.py", "content": "print(1'), fin("length"), usage(3, 8)],
        {},
        # streamed live: the client already holds the cut value; the object is closed after it
        [TU("call_1", "Write", {"file_path": "/a.py", "content": "print(1"})],
        "max_tokens",
        None,
        {"input_tokens": 3, "output_tokens": 8},
        id="length-truncated-live-tool-args-closed",
    ),
    pytest.param(
        [tc(0, name="Write", args='{"file_path": "/a.py", "content": "print(1'), fin("length"), usage(3, 8)],
        {},
        # no id before the end: held back, then repaired like a non-streamed response (the cut value dropped)
        [{"type": "tool_use", "id": "*", "name": "Write", "input": {"file_path": "/a.py"}}],
        "max_tokens",
        None,
        {"input_tokens": 3, "output_tokens": 8},
        id="length-truncated-held-tool-args-repaired",
    ),
    pytest.param(
        [tc(0, id="call_1", name="Run", args="not json at all"), fin("tool_calls")],
        {},
        [TU("call_1", "Run", {"_raw_arguments": "not json at all"})],
        "tool_use",
        None,
        {"input_tokens": 42, "output_tokens": 4},
        id="invalid-json-args-wrapped",
    ),
    pytest.param(
        [tc(0, id="call_1", name="Now", args=""), fin("tool_calls"), usage(1, 1)],
        {},
        [TU("call_1", "Now", {})],
        "tool_use",
        None,
        {"input_tokens": 1, "output_tokens": 1},
        id="empty-args",
    ),
    pytest.param(
        [text("x"), fin("stop"), usage(1000, 10, cached=800)],
        {},
        [T("x")],
        "end_turn",
        None,
        {"input_tokens": 200, "output_tokens": 10, "cache_read_input_tokens": 800},
        id="cached-tokens",
    ),
    pytest.param(
        [tc(0, id="call_1", name="Read", args='{"file_path": "/a"}'), fin("stop"), usage(2, 2)],
        {},
        [TU("call_1", "Read", {"file_path": "/a"})],
        "tool_use",
        None,
        {"input_tokens": 2, "output_tokens": 2},
        id="tool-calls-with-finish-stop",
    ),
    pytest.param(
        [tc(None, id="c1", name="A", args='{"x": 1}'), tc(None, id="c2", name="B", args='{"y": 2}'), fin("tool_calls")],
        {},
        [TU("c1", "A", {"x": 1}), TU("c2", "B", {"y": 2})],
        "tool_use",
        None,
        {"input_tokens": 42, "output_tokens": 4},
        id="tool-calls-without-index",
    ),
    pytest.param(
        [
            tc(0, id="call_g1", name="Read", args='{"file_path": "/a"}'),
            tc(0, id="call_g2", name="Read", args='{"file_path": "/b"}'),
            tc(0, id="call_g2", args=""),
            fin("stop"),
        ],
        {},
        [TU("call_g1", "Read", {"file_path": "/a"}), TU("call_g2", "Read", {"file_path": "/b"})],
        "tool_use",
        None,
        {"input_tokens": 42, "output_tokens": 10},
        id="parallel-calls-sharing-index-0",
    ),
    pytest.param(
        [
            chunk({"role": "assistant", "content": None, "function_call": None, "tool_calls": [
                {"id": "toolu_01", "function": {"arguments": "", "name": "Read"}, "type": "function", "index": 0}]}),
            chunk({"content": None, "tool_calls": [{"id": None, "function": {"arguments": '{"file_path"', "name": None}, "type": "function", "index": 0}]}),
            chunk({"content": None, "tool_calls": [{"id": None, "function": {"arguments": ': "/x"}', "name": None}, "type": "function", "index": 0}]}),
            fin("tool_calls"),
            usage(3, 3),
        ],
        {},
        [TU("toolu_01", "Read", {"file_path": "/x"})],
        "tool_use",
        None,
        {"input_tokens": 3, "output_tokens": 3},
        id="litellm-style-null-fields",
    ),
    pytest.param(
        [text("Sorry"), fin("content_filter"), usage(1, 1)],
        {},
        [T("Sorry")],
        "refusal",
        None,
        {"input_tokens": 1, "output_tokens": 1},
        id="content-filter-is-refusal",
    ),
    pytest.param(
        [chunk({"role": "assistant", "content": None, "refusal": "I can't "}), chunk({"refusal": "help."}), fin("stop"), usage(1, 3)],
        {},
        [T("I can't help.")],
        "refusal",
        None,
        {"input_tokens": 1, "output_tokens": 3},
        id="openai-refusal-delta",
    ),
    pytest.param(
        [chunk({"function_call": {"name": "legacy", "arguments": '{"a":'}}), chunk({"function_call": {"arguments": "1}"}}), fin("function_call")],
        {},
        [{"type": "tool_use", "id": "*", "name": "legacy", "input": {"a": 1}}],
        "tool_use",
        None,
        {"input_tokens": 42, "output_tokens": 2},
        id="legacy-function-call",
    ),
    pytest.param(
        [
            reason("deep"),
            chunk({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "EqQBsig"}]}),
            text("done"),
            fin("stop"),
        ],
        {},
        [TH("deep", sig="EqQBsig"), T("done")],
        "end_turn",
        None,
        {"input_tokens": 42, "output_tokens": 2},
        id="litellm-signature-kept",
    ),
    pytest.param(
        [text("héllo ✓ 日本"), fin("stop"), usage(1, 1)],
        {},
        [T("héllo ✓ 日本")],
        "end_turn",
        None,
        {"input_tokens": 1, "output_tokens": 1},
        id="non-ascii",
    ),
    pytest.param(
        [],
        {},
        [],
        "end_turn",
        None,
        {"input_tokens": 42, "output_tokens": 0},
        id="no-chunks",
    ),
]


@pytest.mark.parametrize("chunks, kw, content, stop_reason, stop_sequence, usage_", CASES)
def test_stream_rebuilds_expected_message(chunks, kw, content, stop_reason, stop_sequence, usage_):
    events, msg = run(chunks, message_id="msg_0123456789abcdefABCDEFGH", **kw)
    got = msg["content"]
    for g, e in zip(got, content):
        if e.get("id") == "*":
            assert g["id"].startswith("toolu_")
            e = {**e, "id": g["id"]}
        assert g == e
    assert len(got) == len(content), got
    assert msg["id"] == "msg_0123456789abcdefABCDEFGH"
    assert msg["model"] == "claude-sonnet-4-5"
    assert msg["stop_reason"] == stop_reason
    assert msg["stop_sequence"] == stop_sequence
    assert {k: v for k, v in msg["usage"].items() if v is not None} == usage_


def test_message_start_carries_input_estimate_and_is_first():
    conv = OpenAIStreamConverter(model="m", input_tokens=1234)
    first = conv.start()
    assert conv.start() == []
    assert first[0][1]["message"]["usage"] == {"input_tokens": 1234, "output_tokens": 0}
    assert conv.feed(text("x"))[0][0] == "content_block_start"


def test_generated_message_id_format():
    conv = OpenAIStreamConverter(model="m")
    mid = conv.start()[0][1]["message"]["id"]
    assert mid.startswith("msg_") and len(mid) == 28 and mid[4:].isalnum()


def test_text_fast_path_events():
    conv = OpenAIStreamConverter(model="m")
    conv.feed(text("a"))
    assert conv.feed(text("b")) == [
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "b"}})
    ]


def test_error_event_after_start_and_nothing_after():
    conv = OpenAIStreamConverter(model="m")
    conv.feed(text("partial"))
    name, data = conv.error("overloaded_error", "upstream overloaded")
    assert name == "error" == data["type"]
    assert data["error"] == {"type": "overloaded_error", "message": "upstream overloaded"}
    assert conv.feed(text("more")) == []
    assert conv.finish() == []


def test_finish_is_idempotent_and_usage_after_finish_reason_is_used():
    conv = OpenAIStreamConverter(model="m", input_tokens=1)
    ev = conv.feed(text("a")) + conv.feed(fin("stop"))
    assert ev[-1][0] == "content_block_stop"  # the block closes as soon as the choice finishes
    ev += conv.feed(usage(11, 22))
    ev += conv.finish()
    assert conv.finish() == []
    check_grammar(ev)
    assert ev[-2][1]["usage"] == {"input_tokens": 11, "output_tokens": 22}


def test_no_done_passthrough_and_sse_framing():
    events, _ = run([text("x"), fin("stop")])
    body = encode_events(events)
    assert b"[DONE]" not in body
    decoded = SSEDecoder().feed(body)
    assert [e.event for e in decoded] == [n for n, _ in events]
    assert all(json.loads(e.data)["type"] == e.event for e in decoded)
    assert body == b"".join(encode_event(n, d) for n, d in events)


def _ev(name: str, **data: Any) -> tuple[str, dict]:
    return (name, {"type": name, **data})


_START = _ev("message_start", message={"id": "msg_x", "content": [], "stop_reason": None, "usage": {"input_tokens": 1}})
_END = [_ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 1}), _ev("message_stop")]


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([_START, _ev("content_block_start", index=1, content_block=T("")), _ev("content_block_stop", index=1), *_END], id="index-gap"),
        pytest.param([_START, _ev("content_block_start", index=0, content_block=T("")), _ev("content_block_start", index=1, content_block=T("")), *_END], id="two-open"),
        pytest.param([_START, _ev("content_block_start", index=0, content_block=TH("", "")), _ev("content_block_stop", index=0), *_END], id="unsigned-thinking"),
        pytest.param([_START, _ev("content_block_start", index=0, content_block=T("")), _ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": "{}"}), _ev("content_block_stop", index=0), *_END], id="wrong-delta-type"),
        pytest.param([_START, ("content_block_stop", {"type": "content_block_start", "index": 0}), *_END], id="type-mismatch"),
        pytest.param([_START, _END[1]], id="no-message-delta"),
    ],
)
def test_grammar_checker_rejects_broken_streams(events):
    with pytest.raises(AssertionError):
        check_grammar(events)


# ----------------------------------------------------------------------------------------- recorded-style bytes

from pathlib import Path  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def _load_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_openai_streams", FIXTURES / "make_openai_streams.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_streams = _load_generator()


def pipeline(raw: bytes, read_size: int, **kw: Any) -> tuple[list[tuple[str, dict]], dict]:
    """Upstream bytes -> SSEDecoder (in `read_size` reads) -> OpenAIStreamConverter -> encode_events -> SDK."""
    dec = SSEDecoder()
    conv = OpenAIStreamConverter(model="claude-sonnet-4-5", input_tokens=7, **kw)
    events: list[tuple[str, dict]] = []
    body = b""
    done = False
    for i in range(0, len(raw), read_size):
        batch: list[tuple[str, dict]] = []
        for ev in dec.feed(raw[i : i + read_size]):
            if ev.is_done:
                done = True
                break
            batch += conv.feed(ev.json())
        if batch:
            events += batch
            body += encode_events(batch)
        if done:
            break
    assert done, "stream ended without [DONE]"
    tail = conv.finish()
    events += tail
    body += encode_events(tail)
    check_grammar(events)
    return events, sdk_final_message(body)


@pytest.mark.parametrize("read_size", [1, 7, 100, 4096, 1 << 20])
@pytest.mark.parametrize(
    "name, kw, content, stop_reason, stop_sequence, usage_",
    [
        (
            "openai_stream_text.sse",
            {},
            [T(_streams.TEXT_EXPECTED)],
            "end_turn",
            None,
            {"input_tokens": 1520, "output_tokens": 120},
        ),
        (
            "openai_stream_tools.sse",
            {},
            [
                T("I'll look at both."),
                TU("call_Q7kP2x9LmN4vR8sT1uW3yZ5a", "Read", {"file_path": "/src/app/handler.py"}),
                TU("call_B6nM3q8KjH2gF5dS9aP1oI4u", "Grep", {"pattern": "class Handler", "output_mode": "content", "-n": True}),
            ],
            "tool_use",
            None,
            {"input_tokens": 258, "output_tokens": 64, "cache_read_input_tokens": 29952},
        ),
        (
            "vllm_stream_reasoning.sse",
            {"stop_sequences": ["###"]},
            [TH("Count to three, then stop."), T("1, 2, 3")],
            "stop_sequence",
            "###",
            {"input_tokens": 7, "output_tokens": 9},  # no usage chunk: (26 + 7 characters) / 4
        ),
    ],
)
def test_recorded_streams_through_the_whole_pure_pipeline(name, kw, content, stop_reason, stop_sequence, usage_, read_size):
    raw = (FIXTURES / name).read_bytes()
    _, msg = pipeline(raw, read_size, **kw)
    assert msg["content"] == content
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop_reason, stop_sequence)
    assert msg["model"] == "claude-sonnet-4-5"
    assert {k: v for k, v in msg["usage"].items() if v is not None} == usage_


@pytest.mark.parametrize(
    "name, make",
    [("openai_stream_text.sse", "text_stream"), ("openai_stream_tools.sse", "tools_stream"), ("vllm_stream_reasoning.sse", "vllm_stream")],
)
def test_stream_fixtures_match_their_generator(name, make):
    assert (FIXTURES / name).read_bytes() == getattr(_streams, make)().encode("utf-8")


@pytest.mark.parametrize("seed", range(40))
def test_random_splits_and_interleavings_never_lose_arguments(seed):
    """Arguments of up to three parallel calls, cut at random points and interleaved at random, with the id and
    name arriving at random moments (possibly after some arguments): the SDK must rebuild every input."""
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 3)
    calls = []
    for k in range(n):
        inp = {"path": f"/src/{k}/{'é' * rng.randint(0, 3)}x.py", "lines": list(range(rng.randint(0, 5))), "flag": bool(k % 2)}
        raw = json.dumps(inp, ensure_ascii=False)
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(0, min(6, len(raw) - 1))))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        calls.append({"index": k, "id": f"call_{seed}_{k}", "name": f"Tool{k}", "input": inp, "pieces": pieces})
    # each call: a head event (id+name, maybe with the first piece) placed at a random position among its pieces
    queues = []
    for c in calls:
        events = [("args", p) for p in c["pieces"]]
        head_at = rng.randint(0, len(events))
        events.insert(head_at, ("head", None))
        queues.append(events)
    chunks = [text("Working on it.")] if rng.random() < 0.5 else []
    while any(queues):
        k = rng.choice([i for i, q in enumerate(queues) if q])
        kind, piece = queues[k].pop(0)
        c = calls[k]
        if kind == "head":
            chunks.append(tc(c["index"], id=c["id"], name=c["name"]))
        else:
            chunks.append(tc(c["index"], args=piece))
    chunks += [fin("tool_calls"), usage(10, 10)]
    _, msg = run(chunks)
    tool_blocks = [b for b in msg["content"] if b["type"] == "tool_use"]
    assert [(b["id"], b["name"], b["input"]) for b in tool_blocks] == [(c["id"], c["name"], c["input"]) for c in calls]


@pytest.mark.parametrize(
    "chunk_",
    [
        {},
        {"choices": None},
        {"choices": []},
        {"choices": [{"delta": None}]},
        {"choices": [{"delta": {"tool_calls": [None, "x", {"index": 0, "function": "bad"}]}}]},
        {"choices": [{"delta": {"content": None, "reasoning_content": None, "tool_calls": None}}]},
        {"usage": None, "choices": [{"delta": {}, "finish_reason": None}]},
    ],
)
def test_odd_chunks_do_not_break_the_grammar(chunk_):
    conv = OpenAIStreamConverter(model="m")
    events = conv.feed(text("a")) + conv.feed(chunk_) + conv.feed(text("b")) + conv.finish()
    check_grammar(events)
