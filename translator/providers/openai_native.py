"""OpenAI-compatible chat completions over one pooled httpx.AsyncClient (the hot path).

Why not LiteLLM here: measured on one loopback upstream, `litellm.acompletion` costs ~5.8 ms of CPU per call
and ~0.45 ms per streamed chunk against ~0.8 ms and ~0.02 ms for httpx plus our own SSE parsing; a long
Claude Code answer is thousands of chunks. So this module does as little as possible per chunk: decode the
SSE bytes incrementally (translator.sse), orjson-parse each `data:` payload, hand the dicts on in batches
(one batch per network read, so the streaming loop pays its per-await costs per read, not per chunk).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx
import orjson

from translator.credentials import Credential
from translator.errors import (ApiError, extract_message, upstream_broken, upstream_error, upstream_timeout,
                               upstream_unreachable)
from translator.routing import Target
from translator.sse import SSEDecoder

_MAX_ERROR_BODY = 64 * 1024


def _headers(cred: Credential) -> dict[str, str]:
    h = {"content-type": "application/json", "accept": "application/json"}
    if cred.key:
        h["authorization"] = f"Bearer {cred.key}"
    return h


def transport_error(exc: Exception, provider: str) -> ApiError:
    """httpx transport failures -> Anthropic-shaped errors (connection refused 502, timeouts 504)."""
    if isinstance(exc, httpx.TimeoutException):
        return upstream_timeout(provider)
    if isinstance(exc, httpx.ConnectError):
        return upstream_unreachable(provider)
    return upstream_broken(provider)


async def error_from_response(resp: httpx.Response, provider: str, cred: Credential) -> ApiError:
    raw = b""
    try:
        async for part in resp.aiter_bytes():
            raw += part
            if len(raw) > _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = raw
    return upstream_error(resp.status_code, extract_message(payload), provider=provider,
                          headers=resp.headers, secrets=[cred.key])


class OpenAIStream:
    """An open streaming response whose status was 200. Iterate `batches()`; always `aclose()`."""

    def __init__(self, resp: httpx.Response, provider: str, cred: Credential) -> None:
        self._resp = resp
        self._provider = provider
        self._cred = cred

    async def batches(self) -> AsyncIterator[list[dict]]:
        decoder = SSEDecoder()
        loads = orjson.loads
        try:
            async for raw in self._resp.aiter_bytes():
                batch: list[dict] = []
                for ev in decoder.feed(raw):
                    data = ev.data
                    if not data:
                        continue
                    if data == "[DONE]":
                        if batch:
                            yield batch
                        return
                    try:
                        chunk = loads(data)
                    except orjson.JSONDecodeError:
                        raise ApiError(502, "api_error", f"upstream {self._provider} sent a malformed stream chunk",
                                       upstream=True) from None
                    if isinstance(chunk, dict) and chunk.get("error") is not None:
                        err = chunk["error"]
                        status = err.get("code") if isinstance(err, dict) else None
                        status = status if isinstance(status, int) and 400 <= status < 600 else 502
                        raise upstream_error(status, extract_message(chunk), provider=self._provider,
                                             secrets=[self._cred.key])
                    batch.append(chunk)
                if batch:
                    yield batch
            tail = [loads(ev.data) for ev in decoder.flush() if ev.data and ev.data != "[DONE]"]
            if tail:
                yield [c for c in tail if isinstance(c, dict)]
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._provider) from None

    async def aclose(self) -> None:
        await self._resp.aclose()


class OpenAIBackend:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @staticmethod
    def _url(target: Target) -> str:
        return f"{(target.base_url or 'https://api.openai.com/v1').rstrip('/')}/chat/completions"

    async def complete(self, target: Target, body: dict, cred: Credential) -> dict:
        try:
            resp = await self.client.post(self._url(target), content=orjson.dumps(body), headers=_headers(cred))
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider) from None
        if resp.status_code != 200:
            raise await error_from_response(resp, target.provider, cred)
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise ApiError(502, "api_error",
                           f"upstream {target.provider} sent a non-JSON response", upstream=True) from None
        if not isinstance(data, dict) or data.get("error") is not None and not data.get("choices"):
            raise upstream_error(502, extract_message(data), provider=target.provider, secrets=[cred.key])
        return data

    async def open_stream(self, target: Target, body: dict, cred: Credential) -> OpenAIStream:
        headers = _headers(cred)
        headers["accept"] = "text/event-stream"
        req = self.client.build_request("POST", self._url(target), content=orjson.dumps(body), headers=headers)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider) from None
        if resp.status_code != 200:
            try:
                raise await error_from_response(resp, target.provider, cred)
            finally:
                await resp.aclose()
        return OpenAIStream(resp, target.provider, cred)
