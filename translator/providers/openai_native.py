"""OpenAI-compatible chat completions over one pooled aiohttp session (the hot path).

Why not LiteLLM here: measured on one loopback upstream, `litellm.acompletion` costs ~5.8 ms of CPU per call
and ~0.45 ms per streamed chunk against a few tens of µs for a pooled client plus our own SSE parsing; a long
Claude Code answer is thousands of chunks. So this module does as little as possible per chunk: decode the
SSE bytes incrementally (translator.sse), orjson-parse each `data:` payload, hand the dicts on in batches
(one batch per network read, so the streaming loop pays its per-await costs per read, not per chunk).

Why aiohttp and not httpx (which the Anthropic passthrough still uses): measured side by side in one process
against the bench's loopback upstream (uvloop, 16 concurrent requests, CPU time per request, two rounds):
httpx 0.28 (pooled AsyncClient, also with trust_env=False and build_request/send) 1040-1100 µs per tiny
non-streaming request, aiohttp 3.14 (pooled ClientSession) 59-65 µs; reading a 203-frame stream 2370-2500 µs
against 262-311 µs. httpx was more than half of the translator's CPU per request (httpcore's pure-Python h11
parsing and anyio's stream layers per read); aiohttp parses HTTP in C (llhttp). Details in docs/translator.md.

aiohttp is also what makes ping pacing cheap: its StreamReader buffers what the connection delivers, so a
read that is cancelled by a timeout loses nothing (the next read returns the buffered bytes). The relay can
therefore wait for the next read under `asyncio.timeout` on the streaming task itself, with no helper task
per read (an httpx read must not be cancelled, so it needed a task per chunk).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from translator.credentials import Credential
from translator.errors import (ApiError, extract_message, upstream_broken, upstream_error, upstream_timeout,
                               upstream_unreachable)
from translator.routing import Target
from translator.sse import SSEDecoder

_MAX_ERROR_BODY = 64 * 1024
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def new_session(*, connect_timeout_s: float, read_timeout_s: float, max_connections: int) -> aiohttp.ClientSession:
    """The pooled upstream session (create it inside the running event loop, close it at shutdown).

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
    """aiohttp transport failures -> Anthropic-shaped errors (connection refused 502, timeouts 504)."""
    if isinstance(exc, TimeoutError):  # aiohttp's connect and socket read timeouts subclass it
        return upstream_timeout(provider)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS failure, unreachable network
        return upstream_unreachable(provider)
    return upstream_broken(provider)


async def error_from_response(resp: aiohttp.ClientResponse, provider: str, cred: Credential) -> ApiError:
    raw = b""
    try:
        while len(raw) <= _MAX_ERROR_BODY:
            part = await resp.content.readany()
            if not part:
                break
            raw += part
    except (aiohttp.ClientError, TimeoutError):
        pass
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = raw
    return upstream_error(resp.status, extract_message(payload), provider=provider, headers=resp.headers,
                          secrets=[cred.key])


def _stream_error(chunk: dict, provider: str, cred: Credential) -> ApiError:
    err = chunk["error"]
    status = err.get("code") if isinstance(err, dict) else None
    status = status if isinstance(status, int) and 400 <= status < 600 else 502
    return upstream_error(status, extract_message(chunk), provider=provider, secrets=[cred.key])


class OpenAIStream:
    """An open streaming response whose status was 200. Iterate `paced_batches()` (or `batches()`); always
    `aclose()`."""

    def __init__(self, resp: aiohttp.ClientResponse, provider: str, cred: Credential) -> None:
        self._resp = resp
        self._provider = provider
        self._cred = cred
        self._decoder = SSEDecoder()
        self._done = False  # [DONE] seen or the body ended

    def _decode(self, raw: bytes) -> list[dict]:
        """The chunks completed by `raw`; sets `_done` at `[DONE]`."""
        batch: list[dict] = []
        loads = orjson.loads
        for ev in self._decoder.feed(raw):
            data = ev.data
            if not data:
                continue
            if data == "[DONE]":
                self._done = True
                return batch
            try:
                chunk = loads(data)
            except orjson.JSONDecodeError:
                raise ApiError(502, "api_error", f"upstream {self._provider} sent a malformed stream chunk",
                               upstream=True) from None
            if isinstance(chunk, dict) and chunk.get("error") is not None:
                raise _stream_error(chunk, self._provider, self._cred)
            batch.append(chunk)
        return batch

    def _tail(self) -> list[dict]:
        self._done = True
        out = []
        for ev in self._decoder.flush():
            if ev.data and ev.data != "[DONE]":
                try:
                    chunk = orjson.loads(ev.data)
                except orjson.JSONDecodeError:
                    raise ApiError(502, "api_error", f"upstream {self._provider} sent a malformed stream chunk",
                                   upstream=True) from None
                if isinstance(chunk, dict):
                    if chunk.get("error") is not None:
                        raise _stream_error(chunk, self._provider, self._cred)
                    out.append(chunk)
        return out

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
                            raise  # the session's own read timeout (aiohttp.ServerTimeoutError)
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
        except (aiohttp.ClientError, TimeoutError) as exc:
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
            except (aiohttp.ClientError, TimeoutError):
                pass
        if self._done and resp.content.at_eof():
            resp.release()
        else:
            resp.close()


class OpenAIBackend:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
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

    @staticmethod
    def _headers(cred: Credential, accept: str) -> dict[str, str]:
        h = {"content-type": "application/json", "accept": accept}
        if cred.key:
            h["authorization"] = f"Bearer {cred.key}"
        return h

    async def complete(self, target: Target, body: dict, cred: Credential) -> dict:
        url, proxy, proxy_auth = self._endpoint(target)
        try:
            resp = await self.session.post(url, data=orjson.dumps(body), proxy=proxy, proxy_auth=proxy_auth, allow_redirects=False,
                                           headers=self._headers(cred, "application/json"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target.provider) from None
        try:
            if resp.status != 200:
                raise await error_from_response(resp, target.provider, cred)
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, target.provider) from None
        finally:
            resp.release()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(502, "api_error",
                           f"upstream {target.provider} sent a non-JSON response", upstream=True) from None
        if not isinstance(data, dict) or data.get("error") is not None and not data.get("choices"):
            raise upstream_error(502, extract_message(data), provider=target.provider, secrets=[cred.key])
        return data

    async def open_stream(self, target: Target, body: dict, cred: Credential) -> OpenAIStream:
        url, proxy, proxy_auth = self._endpoint(target)
        try:
            resp = await self.session.post(url, data=orjson.dumps(body), proxy=proxy, proxy_auth=proxy_auth, allow_redirects=False,
                                           headers=self._headers(cred, "text/event-stream"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target.provider) from None
        if resp.status != 200:
            try:
                raise await error_from_response(resp, target.provider, cred)
            finally:
                resp.close()
        return OpenAIStream(resp, target.provider, cred)
