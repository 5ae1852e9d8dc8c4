"""The one relay: a backend's `Stream` to the client as Anthropic SSE bytes.

It writes the stream's frames as they come, a `ping` event whenever the stream reports that the ping interval
passed since the last event sent, turns a failure after the stream started into the stream's `event: error`
frame (never a made-up stop_reason), closes the upstream response when the stream ends or the client goes
away (the generator is cancelled or closed), and reports the end exactly once through `on_close`.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

import anyio

from translator.backends.base import Stream
from translator.context import RequestContext
from translator.errors import ApiError
from translator.sse import encode_event

PING = encode_event("ping", {"type": "ping"})


async def relay(stream: Stream, ctx: RequestContext, *, ping_interval: float,
                on_close: Callable[[RequestContext], None]) -> AsyncIterator[bytes]:
    try:
        try:
            async for frames in stream.frames(ping_interval):
                yield PING if frames is None else frames
        except ApiError as exc:
            ctx.error = exc
            yield stream.error_frame(exc)
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        stream.account(ctx)
        on_close(ctx)
