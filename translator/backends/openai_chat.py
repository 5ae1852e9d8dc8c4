"""The OpenAI-compatible backend: chat completions over the shared transport (the hot path).

Why not LiteLLM here: measured on one loopback upstream, `litellm.acompletion` costs ~5.8 ms of CPU per call
and ~0.45 ms per streamed chunk against a few tens of µs for a pooled client plus our own SSE parsing; a long
Claude Code answer is thousands of chunks. So this module does as little as possible per chunk: decode the
SSE bytes incrementally (translator.sse), orjson-parse each `data:` payload, hand the dicts on in batches
(one batch per network read, so the streaming loop pays its per-await costs per read, not per chunk).
Which HTTP client carries the request: `translator.backends.transport`. Details in docs/translator.md.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Iterable, Mapping

import orjson

from translator.backends.base import BackendDeps
from translator.backends.chat import ChatBackend
from translator.backends.transport import (Transport, UpstreamResponse, end_response, error_from_response,
                                           event_too_large, is_transport_error, json_answer, transport_error,
                                           within_reader)
from translator.convert import encoded_json
from translator.credentials import Credential
from translator.errors import ApiError, extract_message, upstream_error
from translator.routing import Target
from translator.sse import SSEDecoder, SSEEvent

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def _stream_error(chunk: dict, provider: str, cred: Credential) -> ApiError:
    err = chunk["error"]
    status = err.get("code") if isinstance(err, dict) else None
    status = status if isinstance(status, int) and 400 <= status < 600 else 502
    return upstream_error(status, extract_message(chunk), provider=provider, secrets=[cred.key])


class OpenAIChunks:
    """An open streaming response whose status was 200: its chunk dicts, read batch by batch (a
    `ChunkSource`). Always `aclose()`."""

    def __init__(self, resp: UpstreamResponse, provider: str, cred: Credential,
                 max_event_bytes: int = 4 << 20) -> None:
        self._resp = resp
        self._max_event = max_event_bytes
        self._provider = provider
        self._cred = cred
        self._decoder = SSEDecoder()
        self._done = False  # [DONE] seen or the body ended
        self._read_within = within_reader(resp.content)

    def _chunks(self, events: Iterable[SSEEvent]) -> list[dict]:
        """The chunk dicts of decoded SSE events, up to `[DONE]` (which sets `_done`)."""
        batch: list[dict] = []
        loads = orjson.loads
        for ev in events:
            data = ev.data
            if not data:
                continue
            if data == "[DONE]":
                self._done = True
                return batch
            try:
                chunk = loads(data)
            except orjson.JSONDecodeError:
                chunk = None
            if not isinstance(chunk, dict):
                raise ApiError(502, "api_error", f"upstream {self._provider} sent a malformed stream chunk",
                               upstream=True)
            if chunk.get("error") is not None:
                raise _stream_error(chunk, self._provider, self._cred)
            batch.append(chunk)
        return batch

    async def next_batch(self, wait: float) -> list[dict] | None:
        """The chunks of the next read (see `ChunkSource` and `transport.within_reader`)."""
        if self._done:
            return None
        content = self._resp.content
        try:
            # Bytes already buffered (frames arriving back to back) are taken without the coroutine of a read.
            raw = content.read_nowait() or await self._read_within(wait)
            if not raw:
                if content.at_eof():
                    # The chunks of an event the body's end completed (an upstream that omits the last blank line).
                    self._done = True
                    return self._chunks(self._decoder.flush())
                return []
            decoder = self._decoder
            data = decoder.single_data(raw)
            if data is not None:
                # One `data:` event in this read (a paced upstream's every read): its JSON parsed from the bytes,
                # without an SSEEvent and a str in between. Anything else (not a chunk object, an error chunk,
                # invalid UTF-8) takes the general path below, which decides it.
                if data == b"[DONE]":
                    self._done = True
                    return []
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    chunk = None
                if type(chunk) is dict and chunk.get("error") is None:
                    return [chunk]
            batch = self._chunks(decoder.feed(raw))
            if decoder.pending_bytes > self._max_event:
                raise event_too_large(self._provider, self._max_event)
            return batch
        except ApiError:
            raise
        except Exception as exc:
            if is_transport_error(exc):
                raise transport_error(exc, self._provider) from None
            raise

    async def paced_batches(self, interval: float) -> AsyncIterator[list[dict] | None]:
        """Chunk batches, with `None` whenever `interval` seconds pass without one (tests and tools)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            batch = await self.next_batch(last + interval - loop.time())
            if batch is None:
                return
            if batch:
                yield batch
                last = loop.time()
            elif loop.time() - last >= interval:
                yield None
                last = loop.time()

    async def batches(self) -> AsyncIterator[list[dict]]:
        """Chunk batches without pacing (tests and tools)."""
        async for batch in self.paced_batches(3600.0):
            if batch is not None:
                yield batch

    async def aclose(self) -> None:
        await end_response(self._resp, self._done)


class OpenAIChatClient:
    """POST /chat/completions to an OpenAI-compatible upstream; OpenAI-shaped answers."""

    endpoint = "/chat/completions"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._urls: dict[str | None, str] = {}

    def _url(self, target: Target) -> str:
        hit = self._urls.get(target.base_url)
        if hit is None:
            hit = self._urls[target.base_url] = f"{(target.base_url or DEFAULT_BASE_URL).rstrip('/')}{self.endpoint}"
        return hit

    def _post(self, target: Target, body: dict, cred: Credential, accept: str,
              trace: Mapping[str, str] | None) -> Awaitable[UpstreamResponse]:
        """The request built, and the transport's POST to await (no coroutine frame of its own per request)."""
        headers = {"content-type": "application/json", "accept": accept}
        if cred.key:
            headers["authorization"] = f"Bearer {cred.key}"
        if trace:
            headers.update(trace)
        return self.transport.post(self._url(target), encoded_json.dumps(body), headers, target.provider)

    async def post_json(self, target: Target, body: dict, cred: Credential,
                        trace: Mapping[str, str] | None = None) -> object:
        """POST and the parsed JSON answer of a 200 (any other status raises the mapped error)."""
        resp = await self._post(target, body, cred, "application/json", trace)
        return await json_answer(resp, target.provider, cred, self.transport.max_body_bytes)

    async def complete(self, target: Target, body: dict, cred: Credential,
                       trace: Mapping[str, str] | None = None) -> dict:
        # post_json's two steps written out: one coroutine less between the request and the upstream's answer.
        resp = await self._post(target, body, cred, "application/json", trace)
        data = await json_answer(resp, target.provider, cred, self.transport.max_body_bytes)
        if not isinstance(data, dict) or data.get("error") is not None and not data.get("choices"):
            raise upstream_error(502, extract_message(data), provider=target.provider, secrets=[cred.key])
        return data

    async def open_stream(self, target: Target, body: dict, cred: Credential,
                          trace: Mapping[str, str] | None = None) -> OpenAIChunks:
        resp = await self._post(target, body, cred, "text/event-stream", trace)
        if resp.status != 200:
            raise await error_from_response(resp, target.provider, cred)
        return OpenAIChunks(resp, target.provider, cred, self.transport.max_event_bytes)


class OpenAIChatBackend(ChatBackend):
    """Backend kind `openai`: OpenAI, a LiteLLM gateway (`litellm_proxy/`), vLLM and other compatible servers."""

    kind = "openai"
    client_class: type[OpenAIChatClient] = OpenAIChatClient

    def __init__(self, deps: BackendDeps) -> None:
        self.client = self.client_class(deps.transport)
        # The upstream side is the client's own methods, bound once here (a delegating coroutine would add a
        # frame to every request and to every resumption of it).
        self.chat_complete = self.client.complete  # type: ignore[method-assign]
        self.chat_stream = self.client.open_stream  # type: ignore[method-assign]
