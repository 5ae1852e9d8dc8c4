"""Relaying upstream streams to the client as Anthropic SSE events.

Both relays put `ping` events into long upstream silences, turn a failure after the stream started into an
`event: error` frame (never a made-up stop_reason), and close the upstream response when the client goes
away (the generator is cancelled or closed; the upstream connection is closed with it).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, TypeVar

import anyio

from translator.errors import ApiError, error_body
from translator.sse import encode_event, encode_events

T = TypeVar("T")

PING = encode_event("ping", {"type": "ping"})


async def paced(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """Items of `source`, with `None` yielded whenever `interval` seconds pass without one.

    For sources whose reads must not be cancelled (httpx, LiteLLM): a read that is still pending when the
    interval passes keeps running (asyncio.wait does not cancel it); cancelling it would break the upstream
    HTTP stream. This costs a task per item; the native OpenAI stream paces itself without one
    (`OpenAIStream.paced_batches`).
    """
    it = source.__aiter__()
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()


class StreamStats:
    __slots__ = ("chunks", "error")

    def __init__(self) -> None:
        self.chunks = 0
        self.error: ApiError | None = None


async def relay_openai(stream: Any, converter: Any, *, ping_interval: float, stats: StreamStats,
                       on_close: Callable[[StreamStats], None]) -> AsyncIterator[bytes]:
    """OpenAI-shaped chunk batches -> Anthropic events via the conversion layer's stream converter."""
    feed = converter.feed
    try:
        try:
            # message_start as soon as the upstream answered 200: first bytes out early, and any ping
            # that follows is in Anthropic's order (message_start first).
            yield encode_events(converter.start())
            paced_batches = getattr(stream, "paced_batches", None)
            source = (paced_batches(ping_interval) if paced_batches is not None
                      else paced(stream.batches(), ping_interval))
            async for batch in source:
                if batch is None:
                    yield PING
                    continue
                stats.chunks += len(batch)
                events: list = []
                for chunk in batch:
                    events += feed(chunk)
                if events:
                    yield encode_events(events)
            yield encode_events(converter.finish())
        except ApiError as exc:
            stats.error = exc
            name, data = converter.error(exc.type, exc.message)
            yield encode_event(name, data)
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        on_close(stats)


async def relay_anthropic(stream: Any, *, ping_interval: float, stats: StreamStats,
                          on_close: Callable[[StreamStats], None]) -> AsyncIterator[bytes]:
    """Anthropic upstream events relayed as bytes (cut at event boundaries by the provider)."""
    begun = False  # no ping before the upstream's first event (message_start comes first)
    try:
        try:
            async for frames in paced(stream.frames(), ping_interval):
                if frames is None:
                    if begun:
                        yield PING
                    continue
                begun = True
                stats.chunks += frames.count(b"\n\n")
                yield frames
                if b"event: message_stop" in frames:
                    break  # the message is complete: no ping may follow, whatever the upstream does next
        except ApiError as exc:
            stats.error = exc
            yield encode_event("error", error_body(exc.type, exc.message))
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        on_close(stats)
