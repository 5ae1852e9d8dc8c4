"""What the backends whose upstream speaks OpenAI chat completions share (the OpenAI-compatible and the
LiteLLM backends): the request converted with `translator.convert`, the answer converted back, and a stream of
OpenAI-shaped chunk batches turned into Anthropic SSE frames by the one stream converter.

A subclass provides the upstream side only: `chat_complete(target, body, cred) -> dict` (an OpenAI
chat-completion dict) and `chat_stream(target, body, cred) -> ChunkSource`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Mapping, Protocol

from translator import logs
from translator.caps import caps_for
from translator.context import RequestContext
from translator.convert.openai_request import anthropic_to_openai, convert_tools, tool_name_map
from translator.convert.openai_response import openai_to_anthropic
from translator.convert.openai_stream import OpenAIStreamConverter
from translator.credentials import Credential
from translator.errors import ApiError
from translator.ids import new_message_id
from translator.repeated_tools import CachedTools
from translator.request_body import OFFLOAD_BYTES, release_stepwise
from translator.routing import Target
from translator.sse import encode_event, encode_events
from translator.tokens import count_tokens_locally
from translator.usage import anthropic_content_chars, from_openai

log = logging.getLogger("keyrelay.translator")


def log_conversion_notes(ctx: RequestContext, notes: list[str]) -> None:
    """One line naming what the conversion left out for this backend (server tools, fields, blocks: names and
    counts, never content; escaped, since tool and field names come from the client)."""
    if notes and log.isEnabledFor(logging.INFO):
        logs.log_info(log, "conversion request_id=%s route=%s notes=%s", ctx.request_id,
                      ctx.target.rule if ctx.target else "", json.dumps(notes, ensure_ascii=True))


class ChunkSource(Protocol):
    async def next_batch(self, wait: float) -> list[dict] | None:
        """The OpenAI chunk dicts of the next read; `[]` when `wait` seconds passed without one (or a read
        completed no chunk); `None` at the end of the stream. Failures raise ApiError."""
        ...

    async def aclose(self) -> None:
        ...


class ChatStream:
    """A `Stream` (translator.backends.base) over a `ChunkSource`: chunks -> Anthropic events."""

    __slots__ = ("_source", "_converter", "chunks", "first_chunk_at")

    def __init__(self, source: ChunkSource, converter: OpenAIStreamConverter) -> None:
        self._source = source
        self._converter = converter
        self.chunks = 0
        self.first_chunk_at: float | None = None  # perf_counter() when the first upstream chunk arrived

    async def frames(self, ping_interval: float) -> AsyncIterator[bytes | None]:
        loop = asyncio.get_running_loop()
        converter = self._converter
        feed = converter.feed
        next_batch = self._source.next_batch
        # message_start as soon as the upstream answered 200: first bytes out early, and any ping that follows
        # is in Anthropic's order (message_start first).
        yield encode_events(converter.start())
        last = loop.time()  # when the client was last sent something: pings are timed from here
        while True:
            batch = await next_batch(last + ping_interval - loop.time())
            if batch is None:
                break
            if batch:
                if not self.chunks:
                    self.first_chunk_at = time.perf_counter()
                self.chunks += len(batch)
                if len(batch) == 1:  # a paced upstream's every read
                    events = feed(batch[0])
                else:
                    events = []
                    for chunk in batch:
                        events += feed(chunk)
                if events:
                    yield encode_events(events)
                    last = loop.time()
                if converter.stopped:
                    # A stop sequence ended the output (found in the text): stop reading; closing the
                    # unfinished upstream response tells the upstream to stop generating.
                    break
                if events:
                    continue
            if loop.time() - last >= ping_interval:
                yield None
                last = loop.time()
        yield encode_events(converter.finish())

    def error_frame(self, err: ApiError) -> bytes:
        name, data = self._converter.error(err.type, err.message)
        return encode_event(name, data)

    def account(self, ctx: RequestContext) -> None:
        converter = self._converter
        ctx.chunks = self.chunks
        ctx.usage = from_openai(converter.upstream_usage)  # the final chunk's usage (include_usage)
        ctx.output_chars = converter.output_chars
        ctx.finish_reason = converter.finish_reason
        if self.first_chunk_at is not None:
            ctx.first_token_s = self.first_chunk_at - ctx.started

    async def aclose(self) -> None:
        await self._source.aclose()


def _kept_form(tools: list, caps) -> tuple[Any, int]:
    converted = convert_tools(tools, caps)
    return converted, len(converted.tools.json)


class ChatBackend:
    """Base of the backends with an OpenAI-shaped upstream: chat completions by default; the Responses API
    backend swaps in its three conversions."""

    kind = ""
    counts_upstream = False  # counted locally with the model's tokenizer (translator.tokens)
    to_upstream = staticmethod(anthropic_to_openai)
    stream_converter: type[OpenAIStreamConverter] = OpenAIStreamConverter

    async def chat_complete(self, target: Target, body: dict, cred: Credential,
                            trace: Mapping[str, str] | None = None) -> dict:
        """`trace`: W3C trace-context headers for the upstream request (tracing on), else None."""
        raise NotImplementedError

    async def chat_stream(self, target: Target, body: dict, cred: Credential,
                          trace: Mapping[str, str] | None = None) -> ChunkSource:
        raise NotImplementedError

    def _convert(self, ctx: RequestContext) -> tuple[dict, dict[str, str]]:
        caps = caps_for(ctx.target)
        notes: list[str] = []
        req = ctx.request
        tools = req.tools
        if type(tools) is CachedTools and self.to_upstream is anthropic_to_openai:
            # Tool definitions seen before (translator.repeated_tools): converted and encoded once per caps.
            converted = tools.cache.form(tools.entry, ("chat", caps), lambda: _kept_form(tools, caps))
            body = anthropic_to_openai(req, model=ctx.target.model, caps=caps, notes=notes,
                                       converted_tools=converted)
            names = dict(converted.names)
        else:
            body = self.to_upstream(req, model=ctx.target.model, caps=caps, notes=notes)
            names = tool_name_map(req, caps)
        log_conversion_notes(ctx, notes)
        return body, names  # tool names shortened for the backend, mapped back

    async def _call(self, ctx: RequestContext, call):
        """Convert the request, make the upstream call with it, then free a large body's lists; returns the
        call's result and the tool-name map. A large request converts in a worker thread
        (translator.request_body), a small one right here."""
        large = ctx.size > OFFLOAD_BYTES
        body, tool_names = await asyncio.to_thread(self._convert, ctx) if large else self._convert(ctx)
        try:
            return await call(ctx.target, body, ctx.cred, ctx.trace_headers), tool_names
        finally:
            if large:
                release_stepwise(body.get("messages"), body.get("input"))  # chat / Responses

    async def complete(self, ctx: RequestContext) -> dict:
        if ctx.size > OFFLOAD_BYTES:
            raw, tool_names = await self._call(ctx, self.chat_complete)
        else:  # a small request converts right here: no helper coroutine between this and the upstream call
            body, tool_names = self._convert(ctx)
            raw = await self.chat_complete(ctx.target, body, ctx.cred, ctx.trace_headers)
        return self._answer(ctx, raw, tool_names)

    @staticmethod
    def _answer(ctx: RequestContext, raw: dict, tool_names: dict[str, str]) -> dict:
        """The Anthropic message for a non-streamed answer; its usage (read once, for the message and the
        accounting) and finish reason onto the request's context."""
        req = ctx.request
        usage = ctx.usage = from_openai(raw.get("usage"))
        msg = openai_to_anthropic(raw, model=req.model, stop_sequences=req.stop_sequences, tool_names=tool_names,
                                  usage=usage)
        if usage is None:
            ctx.output_chars = anthropic_content_chars(msg)
        choices = raw.get("choices")
        if choices and isinstance(choices[0], dict):
            ctx.finish_reason = choices[0].get("finish_reason")
        return msg

    async def open_stream(self, ctx: RequestContext) -> ChatStream:
        source, tool_names = await self._call(ctx, self.chat_stream)
        req = ctx.request
        converter = self.stream_converter(model=req.model, message_id=new_message_id(),
                                          stop_sequences=req.stop_sequences, tool_names=tool_names)
        return ChatStream(source, converter)

    async def count_tokens(self, ctx: RequestContext) -> dict:
        offload = ctx.size > OFFLOAD_BYTES
        return {"input_tokens": await count_tokens_locally(ctx.request, ctx.target, offload=offload)}

    async def aclose(self) -> None:
        pass
