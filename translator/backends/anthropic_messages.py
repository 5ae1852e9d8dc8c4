"""The Anthropic native backend: Messages passthrough, no conversion, over the shared transport.

The client's body goes upstream as it came (only `model` replaced by the mapped name, synthetic thinking
blocks removed), with `anthropic-version` and `anthropic-beta` forwarded and the per-user credential as
`x-api-key`. Streams are relayed as bytes, cut at event boundaries so that an error frame the relay may append
never lands inside a half-forwarded event; only the `message_start` event is parsed (to name the model the
client asked for, and for its input and cache token counts) and the `message_delta` event (its final usage).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Mapping

import orjson

from translator.backends.base import BackendDeps
from translator.backends.transport import (UpstreamResponse, end_response, error_from_response, event_too_large,
                                           is_transport_error, json_answer, transport_error, within_reader)
from translator.context import RequestContext
from translator.convert.anthropic_body import drop_synthetic_thinking
from translator.credentials import Credential
from translator.errors import ApiError, error_body
from translator.request_body import OFFLOAD_BYTES
from translator.routing import Target
from translator.sse import EventSplitter, encode_event
from translator.usage import anthropic_content_chars, from_anthropic, merge_anthropic_stream, sse_event_data

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"


def _headers(cred: Credential, client_headers: Mapping[str, str], stream: bool,
             trace: Mapping[str, str] | None = None) -> dict[str, str]:
    h = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json",
         "anthropic-version": client_headers.get("anthropic-version") or DEFAULT_VERSION}
    beta = client_headers.get("anthropic-beta")
    if beta:
        h["anthropic-beta"] = beta
    if cred.key:
        h["x-api-key"] = cred.key
    if trace:
        h.update(trace)
    return h


def _url(target: Target, suffix: str = "") -> str:
    return f"{(target.base_url or DEFAULT_BASE_URL).rstrip('/')}/v1/messages{suffix}"


def _rename_model(event: bytes, model: str) -> tuple[bytes, Any]:
    """Rewrite `message.model` in a message_start event (one event, `\\n\\n`-terminated); also returns the
    event's `message.usage` (input and cache tokens of the stream), or None."""
    head, sep, rest = event.partition(b"data:")
    if not sep:
        return event, None
    payload, nl, tail = rest.partition(b"\n")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return event, None
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        data["message"]["model"] = model
        return head + b"data: " + orjson.dumps(data) + nl + tail, data["message"].get("usage")
    return event, None


class AnthropicStream:
    """A `Stream` (translator.backends.base) over an Anthropic upstream's SSE body."""

    def __init__(self, resp: UpstreamResponse, provider: str, requested_model: str, max_event_bytes: int) -> None:
        self._resp = resp
        self._max_event = max_event_bytes
        self._provider = provider
        self._model = requested_model
        self._splitter = EventSplitter()
        self._done = False  # message_stop relayed or the body ended
        self.chunks = 0
        self.first_chunk_at: float | None = None  # perf_counter() when the first upstream event arrived
        self._start_usage: Any = None  # message_start's usage
        self._delta: Any = None  # message_delta's data (cumulative usage, stop_reason)

    async def frames(self, ping_interval: float) -> AsyncIterator[bytes | None]:
        loop = asyncio.get_running_loop()
        content = self._resp.content
        read_within = within_reader(content)
        splitter = self._splitter
        first = True
        begun = False  # no ping before the upstream's first event (message_start comes first)
        last = loop.time()
        try:
            while True:
                # Bytes already buffered are taken here, without the coroutine of a waiting read.
                raw = content.read_nowait() or await read_within(last + ping_interval - loop.time())
                if not raw:
                    if content.at_eof():
                        break
                    if loop.time() - last >= ping_interval:
                        if begun:
                            yield None
                        last = loop.time()
                    continue
                out = splitter.feed(raw)
                if splitter.pending_bytes > self._max_event:
                    raise event_too_large(self._provider, self._max_event)
                if not out:
                    continue
                if first:
                    first = False
                    self.first_chunk_at = time.perf_counter()
                    end = out.find(b"\n\n") + 2
                    if b"message_start" in out[:end]:
                        renamed, self._start_usage = _rename_model(out[:end], self._model)
                        out = renamed + out[end:]
                begun = True
                self.chunks += out.count(b"\n\n")
                yield out
                last = loop.time()
                if b"event: message_delta" in out:  # near the end: its usage counts are the final ones
                    self._delta = sse_event_data(out, b"message_delta")
                if b"event: message_stop" in out:
                    self._done = True
                    return  # the message is complete: nothing may follow, whatever the upstream does next
        except Exception as exc:
            if is_transport_error(exc):
                raise transport_error(exc, self._provider) from None
            raise
        self._done = True
        tail = splitter.flush()
        if tail:
            self.chunks += 1
            yield tail

    def error_frame(self, err: ApiError) -> bytes:
        return encode_event("error", error_body(err.type, err.message))

    def account(self, ctx: RequestContext) -> None:
        delta = self._delta if isinstance(self._delta, dict) else {}
        ctx.chunks = self.chunks
        ctx.usage = merge_anthropic_stream(self._start_usage, delta.get("usage"))
        reason = delta.get("delta")
        if isinstance(reason, dict) and isinstance(reason.get("stop_reason"), str):
            ctx.finish_reason = reason["stop_reason"]
        if self.first_chunk_at is not None:
            ctx.first_token_s = self.first_chunk_at - ctx.started

    async def aclose(self) -> None:
        await end_response(self._resp, self._done)


class AnthropicBackend:
    """Backend kind `anthropic`: the Anthropic Messages API (or a compatible server) without conversion."""

    kind = "anthropic"
    counts_upstream = True

    def __init__(self, deps: BackendDeps) -> None:
        self.transport = deps.transport

    async def _post(self, ctx: RequestContext, body: bytes, suffix: str, stream: bool) -> UpstreamResponse:
        target = ctx.target
        return await self.transport.post(_url(target, suffix), body,
                                         _headers(ctx.cred, ctx.headers, stream, ctx.trace_headers),
                                         target.provider)

    async def _post_json(self, ctx: RequestContext, body: bytes, suffix: str) -> Any:
        provider = ctx.target.provider
        resp = await self._post(ctx, body, suffix, False)
        return await json_answer(resp, provider, ctx.cred, self.transport.max_body_bytes)

    @staticmethod
    def _body_sync(ctx: RequestContext, extra: dict[str, Any]) -> bytes:
        return orjson.dumps(dict(drop_synthetic_thinking(ctx.body)[0], model=ctx.target.model, **extra))

    async def _body(self, ctx: RequestContext, **extra: Any) -> bytes:
        if ctx.size > OFFLOAD_BYTES:  # a large request is prepared in a worker thread (translator.request_body)
            return await asyncio.to_thread(self._body_sync, ctx, extra)
        return self._body_sync(ctx, extra)

    async def complete(self, ctx: RequestContext) -> dict:
        data = await self._post_json(ctx, await self._body(ctx), "")
        if isinstance(data, dict):
            if "model" in data:
                data["model"] = ctx.request.model
            ctx.usage = from_anthropic(data.get("usage"))
            if ctx.usage is None:
                ctx.output_chars = anthropic_content_chars(data)
            if isinstance(data.get("stop_reason"), str):
                ctx.finish_reason = data["stop_reason"]
        return data

    async def count_tokens(self, ctx: RequestContext) -> dict:
        return await self._post_json(ctx, await self._body(ctx), "/count_tokens")

    async def open_stream(self, ctx: RequestContext) -> AnthropicStream:
        provider = ctx.target.provider
        resp = await self._post(ctx, await self._body(ctx, stream=True), "", True)
        if resp.status != 200:
            raise await error_from_response(resp, provider, ctx.cred)
        return AnthropicStream(resp, provider, ctx.request.model, self.transport.max_event_bytes)

    async def aclose(self) -> None:
        pass
