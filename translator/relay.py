"""The one relay: a backend's `Stream` to the client as Anthropic SSE bytes, as an ASGI response.

It sends the stream's frames as they come, a `ping` event whenever the stream reports that the ping interval
passed since the last event sent, and closes the upstream response when the stream ends or the client goes
away (the server reports `http.disconnect`). Whatever goes wrong after the stream started ends it inside the
grammar, with the stream's `event: error` frame (never a made-up stop_reason, never a cut without an event):
an ApiError as it is; any other exception (a chunk of a shape the converter did not expect, a bug) as
api_error, logged in one line (a traceback only at debug level); the shutdown grace running out as
overloaded_error. The end is reported exactly once through `on_close`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Mapping

import anyio
from starlette.responses import Response

from translator.backends.base import Stream
from translator.context import RequestContext
from translator.errors import ApiError
from translator.logs import clean
from translator.sse import encode_event

log = logging.getLogger("keyrelay.translator")

PING = encode_event("ping", {"type": "ping"})

SHUTDOWN_ERROR = ApiError(529, "overloaded_error", "the translator is shutting down; retry the request")


class Drain:
    """The deadline of the streams in flight when the process is told to stop: `begin(grace_s)` gives every
    stream (running or starting later) `grace_s` more seconds, then each ends with overloaded_error."""

    def __init__(self) -> None:
        self.deadline: float | None = None  # loop time
        self._active: set[asyncio.Timeout] = set()

    def begin(self, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + grace_s
        for timeout in self._active:
            timeout.reschedule(self.deadline)

    @property
    def draining(self) -> bool:
        return self.deadline is not None


class RelayResponse(Response):
    """The ASGI response of one stream (a Starlette `Response` only by type, for the FastAPI route): `http.response.start` (200, text/event-stream), one
    `http.response.body` message per frame the stream produces (more_body), a final empty one.

    Why not Starlette's StreamingResponse: every streamed chunk of every stream passes here, and the
    StreamingResponse path added per chunk an async generator level (the relay as a generator), a task-group
    wrapper frame, and per request an anyio task group. Here the relay loop sends each frame itself, and the
    client's going away is watched the way Starlette does it (a task waiting on `receive()` for
    `http.disconnect`), but with a plain asyncio task: on disconnect it cancels the streaming task, the relay
    closes the upstream response (the upstream stops generating) and reports the end, and the call returns.
    The ASGI contract is the same: start, body messages with more_body, a last one without; `receive` is only
    read for the disconnect.
    """

    media_type = "text/event-stream"

    def __init__(self, stream: Stream, ctx: RequestContext, *, ping_interval: float,
                 on_close: Callable[[RequestContext], None], drain: Drain | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.stream = stream
        self.ctx = ctx
        self.ping_interval = ping_interval
        self.on_close = on_close
        self.drain = drain
        self.status_code = 200
        self.background = None
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        raw.append((b"content-type", b"text/event-stream; charset=utf-8"))
        self.raw_headers = raw
        self._gone = False  # the client disconnected (the listener cancelled the streaming task)
        self._sending = True  # the stream's messages are still being sent (a disconnect after them is no news)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        listener = asyncio.get_running_loop().create_task(self._listen(receive, task))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._relay(send)
            self._sending = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # The listener's cancellation (client gone) ends the response quietly; any other one propagates.
            if not self._gone or task.uncancel() > 0:
                raise
        finally:
            self._sending = False
            listener.cancel()

    async def _listen(self, receive: Callable[[], Awaitable[dict]], task: asyncio.Task) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - a server whose receive fails: treated as the client gone
            pass
        if self._sending:
            self._gone = True
            task.cancel()

    async def _relay(self, send: Callable[[dict], Awaitable[None]]) -> None:
        stream, ctx, drain = self.stream, self.ctx, self.drain
        stop = asyncio.timeout_at(drain.deadline if drain is not None else None)
        frames = stream.frames(self.ping_interval)
        nxt = frames.__anext__
        last: bytes | None = None  # an error frame that ends the stream
        try:
            try:
                async with stop:
                    if drain is not None:
                        drain._active.add(stop)  # noqa: SLF001 - the two halves of one mechanism
                    while True:
                        try:
                            frame = await nxt()
                        except StopAsyncIteration:
                            break
                        except ApiError as exc:
                            ctx.error = exc
                            last = stream.error_frame(exc)
                            break
                        except Exception as exc:  # noqa: BLE001 - the stream must end in the grammar
                            last = self._failed(exc)
                            break
                        await send({"type": "http.response.body", "body": PING if frame is None else frame,
                                    "more_body": True})
            except TimeoutError:
                if not stop.expired():
                    raise
                ctx.error = SHUTDOWN_ERROR
                last = stream.error_frame(SHUTDOWN_ERROR)
            if last is not None:
                await send({"type": "http.response.body", "body": last, "more_body": True})
        finally:
            self._sending = False  # from here on a disconnect does not interrupt the clean-up
            if drain is not None:
                drain._active.discard(stop)  # noqa: SLF001
            try:
                with anyio.CancelScope(shield=True):
                    try:
                        await frames.aclose()  # a generator left at a frame (client gone) runs its clean-up
                    except Exception:  # noqa: BLE001 - closing never hides the stream's own end
                        pass
                    try:
                        await stream.aclose()
                    except Exception:  # noqa: BLE001 - closing never hides the stream's own end
                        pass
            finally:
                try:
                    stream.account(ctx)
                except Exception:  # noqa: BLE001 - accounting a stream that failed oddly must not hide its end
                    log.error("stream accounting failed (request-id %s)", ctx.request_id)
                self.on_close(ctx)

    def _failed(self, exc: Exception) -> bytes:
        """The error frame of an unexpected failure (a chunk of a shape the converter did not expect, a bug),
        logged in one line (a traceback only at debug level)."""
        ctx = self.ctx
        log.error("stream relay failed on %s %s (request-id %s): %s", clean(ctx.method), clean(ctx.path),
                  ctx.request_id, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        err = ctx.error = ApiError(502 if ctx.target else 500, "api_error",
                                   "the stream failed in the translator (unexpected upstream data or an "
                                   "internal error)")
        return self.stream.error_frame(err)
