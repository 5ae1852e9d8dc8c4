"""translator.sse: the incremental decoder (every split of the input gives the same events) and the encoder."""

from __future__ import annotations

import json

import pytest

from translator.sse import SSEDecoder, SSEEvent, encode_event, encode_events


def decode_all(body: bytes, step: int | None = None) -> list[SSEEvent]:
    d = SSEDecoder()
    out: list[SSEEvent] = []
    if step is None:
        out += d.feed(body)
    else:
        for i in range(0, len(body), step):
            out += d.feed(body[i : i + step])
    return out + d.flush()


CASES = [
    pytest.param(b'data: {"a":1}\n\ndata: {"b":2}\n\n', [SSEEvent('{"a":1}'), SSEEvent('{"b":2}')], id="lf"),
    pytest.param(b'data: {"a":1}\r\n\r\ndata: x\r\n\r\n', [SSEEvent('{"a":1}'), SSEEvent("x")], id="crlf"),
    pytest.param(b"data: a\r\rdata: b\r\r", [SSEEvent("a"), SSEEvent("b")], id="cr"),
    pytest.param(b"data: line1\ndata: line2\n\n", [SSEEvent("line1\nline2")], id="multi-line-data"),
    pytest.param(b": keep-alive\n\n: comment\ndata: x\n\n", [SSEEvent("x")], id="comments"),
    pytest.param(b"event: ping\ndata: {}\n\n", [SSEEvent("{}", event="ping")], id="event-field"),
    pytest.param(b"data: [DONE]\n\n", [SSEEvent("[DONE]")], id="done"),
    pytest.param(b"data:nospace\n\n", [SSEEvent("nospace")], id="no-space-after-colon"),
    pytest.param(b"data:  two\n\n", [SSEEvent(" two")], id="only-one-space-stripped"),
    pytest.param(b"data\n\n", [SSEEvent("")], id="field-without-colon"),
    pytest.param(b"event: x\n\n", [], id="no-data-no-dispatch"),
    pytest.param(b"id: 7\ndata: a\n\ndata: b\n\n", [SSEEvent("a", id="7"), SSEEvent("b", id="7")], id="id-persists"),
    pytest.param(b"retry: 3000\ndata: a\n\n", [SSEEvent("a", retry=3000)], id="retry"),
    pytest.param(b"data: a\n\n\n\ndata: b\n\n", [SSEEvent("a"), SSEEvent("b")], id="extra-blank-lines"),
    pytest.param(b"unknown: x\ndata: a\n\n", [SSEEvent("a")], id="unknown-field-ignored"),
    pytest.param('data: {"t":"héllo ✓ 日本"}\n\n'.encode(), [SSEEvent('{"t":"héllo ✓ 日本"}')], id="utf8"),
    pytest.param(b"data: [DONE]\n", [SSEEvent("[DONE]")], id="unterminated-final-event-flushed"),
    pytest.param(b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\r\n\n", [SSEEvent(x) for x in "abcd"], id="mixed-endings"),
]


@pytest.mark.parametrize("body, expected", CASES)
@pytest.mark.parametrize("step", [None, 1, 2, 3, 7])
def test_decoder_any_split(body, expected, step):
    assert decode_all(body, step) == expected


def test_crlf_split_exactly_between_cr_and_lf():
    d = SSEDecoder()
    assert d.feed(b"data: a\r") == []
    assert d.feed(b"\n\r") == [SSEEvent("a")]
    assert d.feed(b"\ndata: b\r\n\r\n") == [SSEEvent("b")]


def test_done_and_json_helpers():
    ev = decode_all(b'data: {"x": [1]}\n\ndata: [DONE]\n\n')
    assert ev[0].json() == {"x": [1]} and not ev[0].is_done
    assert ev[1].is_done


def test_event_split_mid_utf8_sequence():
    body = 'data: "ü日"\n\n'.encode()
    cut = body.index("日".encode()) + 1  # inside the 3-byte sequence
    d = SSEDecoder()
    assert d.feed(body[:cut]) == []
    assert d.feed(body[cut:]) == [SSEEvent('"ü日"')]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("message_stop", {"type": "message_stop"}, b'event: message_stop\ndata: {"type":"message_stop"}\n\n'),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "é\n\"x\""}},
            'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"é\\n\\"x\\""}}\n\n'.encode(),
        ),
        ("error", {"type": "error", "error": {"type": "api_error", "message": "m"}}, b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"m"}}\n\n'),
    ],
)
def test_encode_event(name, data, expected):
    assert encode_event(name, data) == expected
    assert encode_events([(name, data), (name, data)]) == expected * 2
    (ev,) = SSEDecoder().feed(expected)
    assert ev.event == name and json.loads(ev.data) == data


def test_encode_rejects_multiline_event_name():
    with pytest.raises(ValueError):
        encode_event("a\nb", {})


def test_large_event_in_small_reads():
    payload = '{"text":"' + "x" * 300_000 + '"}'
    body = b"data: " + payload.encode() + b"\n\ndata: tail\n\n"
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for i in range(0, len(body), 1000):
        out += d.feed(body[i : i + 1000])
    assert out == [SSEEvent(payload), SSEEvent("tail")]
    assert d.flush() == []


# ------------------------------------------------------------------ single_data (the one-event fast path)

# what was fed before, the read, the data `single_data` returns (None: the read must be fed)
SINGLE = [
    pytest.param(b"", b'data: {"a":1}\n\n', b'{"a":1}', id="one-data-line"),
    pytest.param(b"", b"data: [DONE]\n\n", b"[DONE]", id="done"),
    pytest.param(b"", b'data: {"t":"h\xc3\xa9"}\n\n', b'{"t":"h\xc3\xa9"}', id="utf8-bytes-as-is"),
    pytest.param(b"", b"data: a\n\ndata: b\n\n", None, id="two-events"),
    pytest.param(b"", b"event: x\ndata: a\n\n", None, id="another-field"),
    pytest.param(b"", b"data: a\ndata: b\n\n", None, id="multi-line-data"),
    pytest.param(b"", b"data:a\n\n", None, id="no-space"),
    pytest.param(b"", b"data: a\r\n\r\n", None, id="crlf"),
    pytest.param(b"", b"data: a\n", None, id="unfinished"),
    pytest.param(b"", b": comment\n\n", None, id="comment"),
    pytest.param(b"data: x", b"data: a\n\n", None, id="something-pending"),
    pytest.param(b"data: x\n\r", b"data: a\n\n", None, id="after-a-cr"),
    pytest.param(b"data: x\n\n", b"data: a\n\n", b"a", id="after-a-whole-event"),
]


@pytest.mark.parametrize("before,read,expect", SINGLE)
def test_single_data_is_the_data_feed_would_dispatch(before, read, expect):
    d = SSEDecoder()
    d.feed(before)
    assert d.single_data(read) == expect
    if expect is not None:
        events = d.feed(read)  # what the general path makes of the same read
        assert [(e.event, e.data) for e in events] == [("message", expect.decode())]
