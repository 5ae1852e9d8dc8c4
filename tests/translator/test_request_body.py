"""Request decoding: the stepwise path for large bodies (translator.request_body) gives exactly what orjson and
one pydantic call give, refuses what they refuse, names the right message in a validation error, and enforces
the structural caps on both paths (table-driven)."""

from __future__ import annotations

import orjson
import pytest

from translator.errors import ApiError
from translator.request_body import OFFLOAD_BYTES, RequestLimits, decode_request
from translator.schemas.anthropic import MessagesRequest

LIMITS = RequestLimits(32 << 20, 100_000, 100_000, 600)
PAD = "p" * OFFLOAD_BYTES  # an unknown top-level field that pushes a body onto the stepwise path


def body(messages, **extra) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": messages, **extra}


SAMPLES = [
    body([{"role": "user", "content": [{"type": "text", "text": "é\n\"x"}]}] * 3000,
         system=[{"type": "text", "text": "s"}], tools=[{"name": "t", "input_schema": {"type": "object"}}],
         stream=True, temperature=0.5, metadata={"user_id": None}, pad=PAD),
    body([], pad=PAD),
    body([{"role": "user", "content": "big " * 400_000}]),
    body([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                        "content": [{"type": "text", "text": "r"}]}]}], pad=PAD),
]


@pytest.mark.parametrize("data", SAMPLES)
@pytest.mark.parametrize("indent", [False, True])
async def test_the_stepwise_path_decodes_like_orjson_and_pydantic(data, indent):
    raw = orjson.dumps(data, option=orjson.OPT_INDENT_2 if indent else 0)
    assert len(raw) > OFFLOAD_BYTES
    parsed, req = await decode_request(raw, MessagesRequest, LIMITS)
    assert parsed == orjson.loads(raw)
    assert req == MessagesRequest.model_validate(orjson.loads(raw))


@pytest.mark.parametrize("raw,fragment", [
    (b'{"a": [1, 2,]}', "not valid JSON"),
    (b'{"a" 1}', "not valid JSON"),
    (b'[1]', "must be a JSON object"),
    (b'{"a": NaN}', "not valid JSON"),
    (b'{"a": 1} x', "data after the object"),
    (b'{"messages": [{"role": "user", "content": [1,]}]}', "not valid JSON"),
    (b'{"a": "\xff"}', "invalid UTF-8"),
])
async def test_the_stepwise_path_refuses_what_is_not_json(raw, fragment):
    raw = raw[:-1] + b', "pad": "' + PAD.encode() + b'"}' if raw.endswith(b"}") else raw + b" " * OFFLOAD_BYTES
    with pytest.raises(ApiError) as exc:
        await decode_request(raw, MessagesRequest, LIMITS)
    assert (exc.value.status, exc.value.type) == (400, "invalid_request_error")
    assert fragment in exc.value.message


async def test_a_validation_error_names_the_message_as_the_client_numbered_it():
    messages = [{"role": "user", "content": "x"}] * 1200 + [{"role": "bogus", "content": "x"}]
    with pytest.raises(ApiError) as exc:
        await decode_request(orjson.dumps(body(messages, pad=PAD)), MessagesRequest, LIMITS)
    assert exc.value.message.startswith("messages[1200].role:")


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
SMALL = RequestLimits(32 << 20, 10, 20, 3)


def tool_result(n: int) -> list[dict]:
    return [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [IMAGE] * n}]}]


@pytest.mark.parametrize("messages,within,fragment", [
    ([{"role": "user", "content": "x"}] * 11, [{"role": "user", "content": "x"}] * 10, "more than 10 messages"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"}] * 21}],
     [{"role": "user", "content": [{"type": "text", "text": "x"}] * 20}], "more than 20 content blocks"),
    ([{"role": "user", "content": [IMAGE] * 4}], [{"role": "user", "content": [IMAGE] * 3}], "more than 3 images"),
    (tool_result(4), tool_result(3), "more than 3 images"),
])
@pytest.mark.parametrize("large", [False, True])
async def test_structural_caps_on_both_paths(messages, within, fragment, large):
    data = body(messages, pad=PAD) if large else body(messages)
    with pytest.raises(ApiError) as exc:
        await decode_request(orjson.dumps(data), MessagesRequest, SMALL)
    assert (exc.value.status, exc.value.type) == (413, "request_too_large")
    assert fragment in exc.value.message
    data = body(within, pad=PAD) if large else body(within)
    await decode_request(orjson.dumps(data), MessagesRequest, SMALL)  # at the caps: accepted


async def test_large_lists_are_freed_a_slice_per_loop_iteration():
    import asyncio

    from translator.request_body import release_stepwise

    first, second = list(range(5000)), list(range(3000))
    release_stepwise(first, None, "not a list", second)
    await asyncio.sleep(0)
    assert 0 < len(first) < 5000 and len(second) == 3000  # one slice, then the loop gets its turn back
    for _ in range(10):
        await asyncio.sleep(0)
    assert first == [] and second == []
