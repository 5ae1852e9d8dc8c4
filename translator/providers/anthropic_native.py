"""Anthropic Messages passthrough: no conversion.

The client's body goes upstream as it came (only `model` replaced by the mapped name), with
`anthropic-version` and `anthropic-beta` forwarded and the per-user credential as `x-api-key`. Streams are
relayed as bytes, cut at event boundaries so that an error frame we may append never lands inside a
half-forwarded event; only the `message_start` event is parsed, to name the model the client asked for.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

import httpx
import orjson

from translator.credentials import Credential
from translator.errors import (MAX_ERROR_BODY, ApiError, upstream_broken, upstream_error_from_body,
                               upstream_not_json, upstream_timeout, upstream_unreachable)
from translator.routing import Target

DEFAULT_VERSION = "2023-06-01"
FORWARDED = ("anthropic-version", "anthropic-beta")


def _headers(cred: Credential, client_headers: Mapping[str, str], stream: bool) -> dict[str, str]:
    h = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json",
         "anthropic-version": client_headers.get("anthropic-version") or DEFAULT_VERSION}
    beta = client_headers.get("anthropic-beta")
    if beta:
        h["anthropic-beta"] = beta
    if cred.key:
        h["x-api-key"] = cred.key
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
            if len(raw) > MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    return upstream_error_from_body(resp.status_code, raw, provider=provider, headers=resp.headers,
                                    secrets=[cred.key])


def _url(target: Target, suffix: str = "") -> str:
    return f"{(target.base_url or 'https://api.anthropic.com').rstrip('/')}/v1/messages{suffix}"


def _rename_model(event: bytes, model: str) -> bytes:
    """Rewrite `message.model` in a message_start event (one event, `\\n\\n`-terminated)."""
    head, sep, rest = event.partition(b"data:")
    if not sep:
        return event
    payload, nl, tail = rest.partition(b"\n")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return event
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        data["message"]["model"] = model
        return head + b"data: " + orjson.dumps(data) + nl + tail
    return event


class AnthropicStream:
    def __init__(self, resp: httpx.Response, provider: str, requested_model: str) -> None:
        self._resp = resp
        self._provider = provider
        self._model = requested_model

    async def frames(self) -> AsyncIterator[bytes]:
        """Complete SSE events as bytes (several per item when a read carried several)."""
        buf = b""
        first = True
        try:
            async for raw in self._resp.aiter_bytes():
                buf += raw
                if b"\r" in buf:
                    buf = buf.replace(b"\r\n", b"\n")
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    continue
                out, buf = buf[:cut + 2], buf[cut + 2:]
                if first:
                    first = False
                    end = out.find(b"\n\n") + 2
                    if b"message_start" in out[:end]:
                        out = _rename_model(out[:end], self._model) + out[end:]
                yield out
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._provider) from None
        if buf.strip():
            yield buf + b"\n\n"

    async def aclose(self) -> None:
        await self._resp.aclose()


class AnthropicBackend:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def complete(self, target: Target, body: dict, client_headers: Mapping[str, str], cred: Credential,
                       *, requested_model: str) -> dict:
        data = await self._post_json(target, body, client_headers, cred, "")
        if isinstance(data, dict) and "model" in data:
            data["model"] = requested_model
        return data

    async def count_tokens(self, target: Target, body: dict, client_headers: Mapping[str, str],
                           cred: Credential) -> dict:
        return await self._post_json(target, body, client_headers, cred, "/count_tokens")

    async def _post_json(self, target: Target, body: dict, client_headers: Mapping[str, str], cred: Credential,
                         suffix: str) -> Any:
        upstream_body = dict(body, model=target.model)
        try:
            resp = await self.client.post(_url(target, suffix), content=orjson.dumps(upstream_body),
                                          headers=_headers(cred, client_headers, False))
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider) from None
        if resp.status_code != 200:
            raise await error_from_response(resp, target.provider, cred)
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise upstream_not_json(target.provider) from None

    async def open_stream(self, target: Target, body: dict, client_headers: Mapping[str, str], cred: Credential,
                          *, requested_model: str) -> AnthropicStream:
        upstream_body = dict(body, model=target.model, stream=True)
        req = self.client.build_request("POST", _url(target), content=orjson.dumps(upstream_body),
                                        headers=_headers(cred, client_headers, True))
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider) from None
        if resp.status_code != 200:
            try:
                raise await error_from_response(resp, target.provider, cred)
            finally:
                await resp.aclose()
        return AnthropicStream(resp, target.provider, requested_model)
