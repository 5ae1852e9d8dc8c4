"""The one relay: a backend's `Stream` to the client as Anthropic SSE bytes.

It writes the stream's frames as they come, a `ping` event whenever the stream reports that the ping interval
passed since the last event sent, and closes the upstream response when the stream ends or the client goes
away (the generator is cancelled or closed). Whatever goes wrong after the stream started ends it inside the
grammar, with the stream's `event: error` frame (never a made-up stop_reason, never a cut without an event):
an ApiError as it is; any other exception (a chunk of a shape the converter did not expect, a bug) as
api_error, logged in one line (a traceback only at debug level); the shutdown grace running out as
overloaded_error. The end is reported exactly once through `on_close`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

import anyio

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


async def relay(stream: Stream, ctx: RequestContext, *, ping_interval: float,
                on_close: Callable[[RequestContext], None], drain: Drain | None = None) -> AsyncIterator[bytes]:
    stop = asyncio.timeout_at(drain.deadline if drain is not None else None)
    try:
        try:
            async with stop:
                if drain is not None:
                    drain._active.add(stop)  # noqa: SLF001 - the two halves of one mechanism
                async for frames in stream.frames(ping_interval):
                    yield PING if frames is None else frames
        except ApiError as exc:
            ctx.error = exc
            yield stream.error_frame(exc)
        except TimeoutError:
            if not stop.expired():
                raise
            ctx.error = SHUTDOWN_ERROR
            yield stream.error_frame(SHUTDOWN_ERROR)
        except Exception as exc:  # noqa: BLE001 - the stream must end in the grammar, whatever happened
            log.error("stream relay failed on %s %s (request-id %s): %s", clean(ctx.method), clean(ctx.path),
                      ctx.request_id, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            err = ctx.error = ApiError(502 if ctx.target else 500, "api_error",
                                       "the stream failed in the translator (unexpected upstream data or an "
                                       "internal error)")
            yield stream.error_frame(err)
    finally:
        if drain is not None:
            drain._active.discard(stop)  # noqa: SLF001
        with anyio.CancelScope(shield=True):
            try:
                await stream.aclose()
            except Exception:  # noqa: BLE001 - closing never hides the stream's own end
                pass
        try:
            stream.account(ctx)
        except Exception:  # noqa: BLE001 - accounting a stream that failed oddly must not hide its end
            log.error("stream accounting failed (request-id %s)", ctx.request_id)
        on_close(ctx)
