"""translator.relay.RelayResponse at its ASGI edge: the messages it sends for what a stream does (frames, pings,
failures, the shutdown grace), the client going away (`http.disconnect`), and the end reported exactly once.

The stream here is scripted (the relay's input is the `Stream` interface); the relay over real backends, a real
server and the anthropic SDK is covered by test_server_*.py, test_hostile_upstream.py (drain, hostile streams)
and test_server_openai.py::test_client_disconnect_cancels_upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from translator.context import RequestContext
from translator.errors import ApiError
from translator.relay import PING, Drain, RelayResponse


class ScriptedStream:
    """A `Stream` whose frames are a script: bytes (a frame), None (a ping is due), a float (wait that long),
    an exception (raised)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.closed = 0
        self.generator_closed = False

    async def frames(self, ping_interval: float) -> AsyncIterator[bytes | None]:
        try:
            for step in self.script:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
        finally:
            self.generator_closed = True

    def error_frame(self, err: ApiError) -> bytes:
        return b"error:" + err.type.encode()

    def account(self, ctx: RequestContext) -> None:
        ctx.chunks = sum(1 for s in self.script if isinstance(s, bytes))

    async def aclose(self) -> None:
        self.closed += 1


class Client:
    """The server's side of one ASGI exchange: `receive` reports a disconnect when `leave()` is called (else it
    waits, as uvicorn's does once the request body was read); `send` records the messages."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def response(stream: ScriptedStream, closes: list[RequestContext], drain: Drain | None = None) -> RelayResponse:
    ctx = RequestContext("messages", "POST", "/v1/messages", "req_test", {})
    return RelayResponse(stream, ctx, ping_interval=10.0, on_close=closes.append, drain=drain,
                         headers={"request-id": "req_test"})


# name, script, the body messages' bodies (b"" last: the final message without more_body), the error type
CASES = [
    ("frames and a ping", [b"a", None, b"b"], [b"a", PING, b"b", b""], None),
    ("an ApiError ends it with its error event", [b"a", ApiError(504, "api_error", "x")],
     [b"a", b"error:api_error", b""], "api_error"),
    ("an unexpected exception ends it with api_error", [b"a", KeyError("k")], [b"a", b"error:api_error", b""],
     "api_error"),
    ("an empty stream", [], [b""], None),
]


@pytest.mark.parametrize("name,script,bodies,error", CASES, ids=[c[0] for c in CASES])
async def test_what_the_relay_sends(name, script, bodies, error):
    stream, client, closes = ScriptedStream(script), Client(), []
    resp = response(stream, closes)
    await resp(scope={"type": "http"}, receive=client.receive, send=client.send)
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"request-id", b"req_test") in start["headers"]
    assert client.bodies() == bodies
    assert [m["more_body"] for m in client.sent[1:]] == [True] * (len(bodies) - 1) + [False]
    assert stream.closed == 1 and len(closes) == 1
    ctx = closes[0]
    assert (ctx.error.type if ctx.error else None) == error
    assert ctx.chunks == sum(1 for s in script if isinstance(s, bytes))


async def test_the_client_leaving_ends_the_stream_and_closes_the_upstream():
    stream, client, closes = ScriptedStream([b"a", 30.0, b"never"]), Client(), []
    resp = response(stream, closes)
    task = asyncio.ensure_future(resp(scope={"type": "http"}, receive=client.receive, send=client.send))
    await asyncio.sleep(0.05)
    client.leave()
    await asyncio.wait_for(task, 2)  # returns (no exception) well before the stream's 30 s
    assert client.bodies() == [b"a"]  # nothing after the disconnect, no final message
    assert stream.generator_closed and stream.closed == 1 and len(closes) == 1
    assert task.cancelling() == 0  # the listener's cancellation was taken back


async def test_a_disconnect_after_the_end_changes_nothing():
    stream, client, closes = ScriptedStream([b"a"]), Client(), []
    client.leave()  # receive reports the disconnect at once (as uvicorn does after the response completed)
    resp = response(stream, closes)
    await resp(scope={"type": "http"}, receive=client.receive, send=client.send)
    assert len(closes) == 1 and stream.closed == 1


async def test_a_cancellation_from_elsewhere_propagates():
    stream, client, closes = ScriptedStream([b"a", 30.0]), Client(), []
    resp = response(stream, closes)
    task = asyncio.ensure_future(resp(scope={"type": "http"}, receive=client.receive, send=client.send))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.closed == 1 and len(closes) == 1


async def test_the_shutdown_grace_ends_the_stream_with_overloaded_error():
    drain = Drain()
    stream, client, closes = ScriptedStream([b"a", 30.0, b"never"]), Client(), []
    resp = response(stream, closes, drain)
    task = asyncio.ensure_future(resp(scope={"type": "http"}, receive=client.receive, send=client.send))
    await asyncio.sleep(0.05)
    drain.begin(0.1)
    await asyncio.wait_for(task, 2)
    assert client.bodies() == [b"a", b"error:overloaded_error", b""]
    assert closes[0].error.type == "overloaded_error" and stream.closed == 1
