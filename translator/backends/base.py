"""The backend protocol: what the orchestration (`translator.service`) needs from any upstream.

A backend serves one backend kind (`Target.backend`) and speaks the Anthropic Messages API towards the
translator, whatever its upstream speaks: `complete` returns an Anthropic message, `open_stream` a `Stream`
of Anthropic SSE frames, `count_tokens` an Anthropic count. Conversion, the upstream's wire format, its
transport and its error mapping are the backend's business; every failure leaves a backend as an
`ApiError` (Anthropic-shaped, scrubbed of keys).

The registry (`translator.backends.registry`) maps each backend kind to its implementation; adding a backend
is one module with one class plus its registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from translator.backends.transport import Transport
from translator.context import RequestContext
from translator.errors import ApiError
from translator.settings import Settings


class Stream(Protocol):
    """An open upstream stream whose answer was 200. Iterate `frames()` once; always `aclose()`."""

    chunks: int  # upstream chunks (or events) received so far, for metrics and logs

    def frames(self, ping_interval: float) -> AsyncIterator[bytes | None]:
        """Complete Anthropic SSE events as bytes (several per item when one read completed several), in the
        Anthropic grammar (message_start first). `None` whenever `ping_interval` seconds passed since the
        last item without a new event: the relay sends a ping then. Failures raise ApiError."""
        ...

    def error_frame(self, err: ApiError) -> bytes:
        """The `event: error` frame that ends the stream after `err`."""
        ...

    def account(self, ctx: RequestContext) -> None:
        """Write what the stream learned into `ctx`, once, when it ended: chunks, the usage the upstream
        reported (or the generated characters, for an estimate), the finish reason and the time of the first
        upstream chunk (`ctx.first_token_s`). Only the final usage is read: nothing is added per chunk."""
        ...

    async def aclose(self) -> None:
        """Release the upstream response: a finished one goes back to the pool, an unfinished one is closed
        (which is how the upstream learns to stop generating). Never raises."""
        ...


class Backend(Protocol):
    kind: str  # the `Target.backend` value it serves
    counts_upstream: bool  # count_tokens asks the upstream (with the caller's credential) rather than locally

    async def complete(self, ctx: RequestContext) -> dict:
        """The Anthropic message for a non-streaming request (`ctx.request`, `ctx.body`, `ctx.target`)."""
        ...

    async def open_stream(self, ctx: RequestContext) -> Stream:
        """Send a streaming request; returns once the upstream answered 200 (any other answer raises)."""
        ...

    async def count_tokens(self, ctx: RequestContext) -> dict:
        """`{"input_tokens": n}` for a count_tokens request (`ctx.body`, `ctx.target`)."""
        ...

    async def aclose(self) -> None:
        ...


@dataclass(frozen=True)
class BackendDeps:
    """What a backend may be built from: the settings and the shared upstream transport."""

    settings: Settings
    transport: Transport
