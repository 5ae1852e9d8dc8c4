"""Streams through Envoy: the same events, in the same order, with the same content as the translator's direct
output, delivered as they are produced (Envoy does not buffer event streams)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.e2e.conftest import KEY_CHARLIE
from tests.support.upstream import Reply, anthropic_stream, openai_stream_tool_call, openai_stream_text

pytestmark = pytest.mark.e2e

TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
ARGS = {"city": "Paris", "units": "celsius", "detail": "a long enough argument to be split in pieces"}


def _body(model: str) -> dict:
    return {"model": model, "max_tokens": 256, "stream": True, "tools": TOOLS,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}


def _events(raw: bytes) -> list[tuple[str, dict]]:
    """SSE bytes -> [(event, data)], with per-response ids replaced so two runs compare equal."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "", []
        for line in block.decode().split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if not data:
            continue
        doc = json.loads("\n".join(data))
        if name == "message_start":
            doc["message"]["id"] = "<id>"
        out.append((name, doc))
    return out


def _stream(url: str, body: dict, headers: dict[str, str]) -> tuple[bytes, list[float]]:
    """Raw bytes of a streamed response and the arrival time of each read."""
    chunks, times = [], []
    start = time.monotonic()
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", url + "/v1/messages", json=body,
                           headers={"anthropic-version": "2023-06-01", **headers}) as resp:
            assert resp.status_code == 200, resp.read()
            assert resp.headers["content-type"].startswith("text/event-stream")
            for chunk in resp.iter_raw():
                chunks.append(chunk)
                times.append(time.monotonic() - start)
    return b"".join(chunks), times


CASES = {
    # name -> (model, upstream reply)
    "openai-text-and-tool-call": ("claude-sonnet-4-5",
                                  lambda: openai_stream_tool_call("call_weather_1", "get_weather", ARGS,
                                                                  text="Let me check.", split=4)),
    "anthropic-tool-use": ("anthropic/claude-test", lambda: anthropic_stream([
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                   "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stream_through_envoy_is_identical_to_translator_output(stack, up, case):
    model, reply = CASES[case]
    up.push(reply(), reply())
    direct, _ = _stream(stack.translator.url, _body(model), {"authorization": f"Bearer {KEY_CHARLIE}"})
    via_envoy, _ = _stream(stack.envoy.url, _body(model), {"x-api-key": KEY_CHARLIE})
    direct_events, envoy_events = _events(direct), _events(via_envoy)
    assert [e for e, _ in envoy_events][:1] == ["message_start"] and envoy_events[-1][0] == "message_stop"
    assert envoy_events == direct_events
    tool_blocks = [d for e, d in envoy_events
                   if e == "content_block_start" and d["content_block"]["type"] == "tool_use"]
    assert len(tool_blocks) == 1 and tool_blocks[0]["content_block"]["name"] == "get_weather"
    assert up.keys == [KEY_CHARLIE, KEY_CHARLIE]


def test_sdk_assembles_the_tool_call_through_envoy(stack, up):
    up.push(openai_stream_tool_call("call_weather_2", "get_weather", ARGS, text="Checking.", split=5))
    with stack.envoy.client(KEY_CHARLIE).messages.stream(
            model="claude-sonnet-4-5", max_tokens=256, tools=TOOLS,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Checking."
    assert final.content[1].name == "get_weather" and final.content[1].input == ARGS


def test_events_arrive_as_produced_not_buffered(stack, up):
    pieces = ["one ", "two ", "three ", "four ", "five "]
    delay = 0.3
    reply: Reply = openai_stream_text(pieces, frame_delay_s=delay)
    up.push(reply)
    raw, times = _stream(stack.envoy.url, {k: v for k, v in _body("claude-sonnet-4-5").items() if k != "tools"}, {"x-api-key": KEY_CHARLIE})
    texts = [d["delta"]["text"] for e, d in _events(raw) if e == "content_block_delta"]
    assert "".join(texts) == "".join(pieces)
    # The upstream spends ~(frames x delay) producing the stream; the first bytes must arrive long before
    # the end (a buffering hop would deliver everything at once).
    total = times[-1]
    assert total >= delay * (len(pieces) - 1)
    assert times[0] < total - 2 * delay, times
    assert len(times) >= 3, times
