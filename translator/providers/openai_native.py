"""OpenAI-compatible chat completions over one pooled aiohttp session (the hot path).

Why not LiteLLM here: measured on one loopback upstream, `litellm.acompletion` costs ~5.8 ms of CPU per call
and ~0.45 ms per streamed chunk against a few tens of µs for a pooled client plus our own SSE parsing; a long
Claude Code answer is thousands of chunks. So this module does as little as possible per chunk: decode the
SSE bytes incrementally (translator.sse), orjson-parse each `data:` payload, hand the dicts on in batches
(one batch per network read, so the streaming loop pays its per-await costs per read, not per chunk).

Which HTTP client: direct requests (the common case: an in-cluster LiteLLM gateway, vLLM, api.openai.com)
go over `translator.providers.http1`, a small pooled HTTP/1.1 client on asyncio transports and httptools;
requests that the environment routes through a proxy (HTTP(S)_PROXY, NO_PROXY) go over one aiohttp session.
Measured side by side in one process against the bench's loopback upstream (uvloop, 16 concurrent requests,
CPU time per tiny non-streaming request): httpx 0.28 (pooled AsyncClient) 1040-1100 µs, aiohttp 3.14 (pooled
ClientSession) 52.6-65 µs, http1 9.6-9.7 µs. Why http1 is enough and what it leaves out: its docstring.
Details in docs/translator.md.

Both clients buffer what the connection delivers, so a read cancelled by a timer loses nothing (the next read
returns the buffered bytes). That is what makes ping pacing cheap: the relay waits for the next read under
`asyncio.timeout` on the streaming task itself, with no helper task per read.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from translator.credentials import Credential
from translator.errors import (MAX_ERROR_BODY, ApiError, extract_message, upstream_broken, upstream_error,
                               upstream_error_from_body, upstream_not_json, upstream_timeout, upstream_unreachable)
from translator.providers import http1
from translator.routing import Target
from translator.sse import SSEDecoder, SSEEvent

# What both clients raise for transport failures (http1.ReadTimeout and ConnectTimeout are TimeoutErrors).
TRANSPORT_ERRORS = (aiohttp.ClientError, http1.HttpError, TimeoutError)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def new_session(*, connect_timeout_s: float, read_timeout_s: float, max_connections: int) -> aiohttp.ClientSession:
    """The pooled aiohttp session for proxied requests (create it inside the running event loop, close it at
    shutdown).

    trust_env is off because aiohttp would then read the proxy variables and ~/.netrc on every request;
    `OpenAIBackend` resolves the environment's proxy once per upstream URL instead (same variables:
    HTTP(S)_PROXY, NO_PROXY).
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=60,
                                       ttl_dns_cache=300),
        # connect covers waiting for a pooled connection and connecting; sock_read is the silence allowed
        # between two reads of the response (a streamed answer may take longer than any total timeout).
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s,
                                      sock_read=read_timeout_s),
        headers={"user-agent": "keyrelay-translator/0.1"},
        # No cookie jar: the session is shared by every user's requests, so a cookie one upstream answer set
        # must never ride along on another user's request (and the jar costs a lookup per request).
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=True,
    )
    # Requests pass allow_redirects=False: a redirect is not followed (as with httpx before); a POST carrying a
    # user's key must not be replayed to wherever a Location header points. It is answered as an upstream error.


def transport_error(exc: BaseException, provider: str) -> ApiError:
    """Transport failures of either client -> Anthropic-shaped errors (connection failed 502, timeouts 504)."""
    if isinstance(exc, TimeoutError):  # both clients' connect and read timeouts subclass it
        return upstream_timeout(provider)
    if isinstance(exc, (aiohttp.ClientConnectorError, http1.ConnectError)):  # refused, DNS, unreachable, TLS
        return upstream_unreachable(provider)
    return upstream_broken(provider)


# The response interface both clients offer: status, headers, content.read_nowait/readany/at_eof, read(),
# release(), close().
UpstreamResponse = aiohttp.ClientResponse | http1.Response


async def error_from_response(resp: UpstreamResponse, provider: str, cred: Credential) -> ApiError:
    raw = b""
    try:
        while len(raw) <= MAX_ERROR_BODY:
            part = await resp.content.readany()
            if not part:
                break
            raw += part
    except TRANSPORT_ERRORS:
        pass
    return upstream_error_from_body(resp.status, raw, provider=provider, headers=resp.headers, secrets=[cred.key])


def _stream_error(chunk: dict, provider: str, cred: Credential) -> ApiError:
    err = chunk["error"]
    status = err.get("code") if isinstance(err, dict) else None
    status = status if isinstance(status, int) and 400 <= status < 600 else 502
    return upstream_error(status, extract_message(chunk), provider=provider, secrets=[cred.key])


class OpenAIStream:
    """An open streaming response whose status was 200. Iterate `paced_batches()` (or `batches()`); always
    `aclose()`."""

    def __init__(self, resp: UpstreamResponse, provider: str, cred: Credential) -> None:
        self._resp = resp
        self._provider = provider
        self._cred = cred
        self._decoder = SSEDecoder()
        self._done = False  # [DONE] seen or the body ended

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

    def _decode(self, raw: bytes) -> list[dict]:
        """The chunks completed by `raw`."""
        return self._chunks(self._decoder.feed(raw))

    def _tail(self) -> list[dict]:
        """The chunks of an event the body's end completed (an upstream that omits the final blank line)."""
        self._done = True
        return self._chunks(self._decoder.flush())

    async def paced_batches(self, interval: float) -> AsyncIterator[list[dict] | None]:
        """Chunk batches (one per network read), with `None` whenever `interval` seconds pass without one.

        Bytes already buffered are taken without waiting; only an empty buffer arms a timer (`asyncio.timeout`
        on this task: no helper task, and a timed-out read loses nothing, see the module docstring).
        """
        content = self._resp.content
        try:
            while not self._done:
                raw = content.read_nowait()
                if not raw:
                    if content.at_eof():
                        tail = self._tail()
                        if tail:
                            yield tail
                        return
                    timer = asyncio.timeout(interval)
                    try:
                        async with timer:
                            raw = await content.readany()
                    except TimeoutError:
                        if not timer.expired():
                            raise  # the client's own read timeout
                        raw = content.read_nowait()  # bytes that arrived just as the timer fired
                        if not raw:
                            if not content.at_eof():
                                yield None
                            continue
                    if not raw:
                        continue  # end of body: handled at the top
                batch = self._decode(raw)
                if batch:
                    yield batch
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self._provider) from None

    async def batches(self) -> AsyncIterator[list[dict]]:
        """Chunk batches without pacing (tests and tools)."""
        async for batch in self.paced_batches(3600.0):
            if batch is not None:
                yield batch

    async def aclose(self) -> None:
        # A finished stream goes back to the pool; an unfinished one (client gone, error) closes the connection,
        # which is how the upstream learns to stop generating. After `[DONE]` the body's end (the last chunk
        # of the chunked encoding) may still be on its way: wait for it briefly rather than lose the connection.
        resp = self._resp
        if self._done and not resp.content.at_eof():
            try:
                async with asyncio.timeout(0.5):
                    while await resp.content.readany():
                        pass
            except TRANSPORT_ERRORS:
                pass
        if self._done and resp.content.at_eof():
            resp.release()
        else:
            resp.close()


class OpenAIBackend:
    def __init__(self, session: aiohttp.ClientSession, pool: http1.Http1Pool) -> None:
        self.session = session  # requests through a proxy
        self.pool = pool  # direct requests
        self._urls: dict[str | None, tuple[URL, URL | None, aiohttp.BasicAuth | None]] = {}

    def _endpoint(self, target: Target) -> tuple[URL, URL | None, aiohttp.BasicAuth | None]:
        """The chat completions URL of a target and its proxy from the environment, resolved once per base URL."""
        hit = self._urls.get(target.base_url)
        if hit is None:
            url = URL(f"{(target.base_url or DEFAULT_BASE_URL).rstrip('/')}/chat/completions")
            try:
                proxy, auth = get_env_proxy_for_url(url)
            except LookupError:
                proxy, auth = None, None
            hit = self._urls[target.base_url] = (url, proxy, auth)
        return hit

    async def _post(self, target: Target, body: dict, cred: Credential, accept: str) -> UpstreamResponse:
        url, proxy, proxy_auth = self._endpoint(target)
        headers = {"content-type": "application/json", "accept": accept}
        if cred.key:
            headers["authorization"] = f"Bearer {cred.key}"
        data = orjson.dumps(body)
        try:
            if proxy is None:
                return await self.pool.post(url, data, headers)
            return await self.session.post(url, data=data, proxy=proxy, proxy_auth=proxy_auth,
                                           allow_redirects=False, headers=headers)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, target.provider) from None

    async def complete(self, target: Target, body: dict, cred: Credential) -> dict:
        resp = await self._post(target, body, cred, "application/json")
        try:
            if resp.status != 200:
                raise await error_from_response(resp, target.provider, cred)
            try:
                raw = await resp.read()
            except TRANSPORT_ERRORS as exc:
                raise transport_error(exc, target.provider) from None
        except BaseException:
            resp.close()
            raise
        resp.release()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise upstream_not_json(target.provider) from None
        if not isinstance(data, dict) or data.get("error") is not None and not data.get("choices"):
            raise upstream_error(502, extract_message(data), provider=target.provider, secrets=[cred.key])
        return data

    async def open_stream(self, target: Target, body: dict, cred: Credential) -> OpenAIStream:
        resp = await self._post(target, body, cred, "text/event-stream")
        if resp.status != 200:
            try:
                raise await error_from_response(resp, target.provider, cred)
            finally:
                resp.close()
        return OpenAIStream(resp, target.provider, cred)
