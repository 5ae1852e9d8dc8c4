"""The one upstream transport of the HTTP backends (OpenAI-compatible and Anthropic native).

Direct requests (the common case: an in-cluster LiteLLM gateway, vLLM, api.openai.com, api.anthropic.com) go
over `translator.backends.http1`, a small pooled HTTP/1.1 client on asyncio transports and httptools. Requests
that the environment routes through a proxy (HTTP(S)_PROXY, NO_PROXY) go over one aiohttp session, created
and imported only when the first such request is made. Measured side by side in one process against the
bench's loopback upstream (uvloop, 16 concurrent requests, CPU time per tiny non-streaming request): httpx
0.28 (pooled AsyncClient) 1040-1100 µs, aiohttp 3.14 (pooled ClientSession) 52.6-65 µs, http1 9.6-9.7 µs.

Both clients give the same response interface (`status`, `headers`, `content.read_nowait/readany/at_eof`,
`release()`, `close()`), and both buffer what the connection delivers, so a read cancelled by a timer loses
nothing (the next read returns the buffered bytes). That is what makes ping pacing cheap: a stream waits for
its next read with a deadline on the streaming task itself, with no helper task per read (`within_reader`:
http1's body keeps one lazily re-armed timer per stream; an aiohttp body reads under `asyncio.timeout`).

Every transport failure leaves this module as an Anthropic-shaped `ApiError` (`transport_error`): connection
failures 502, timeouts 504. Redirects are never followed (a POST carrying a user's key is not replayed to
wherever a Location header points); they are answered as upstream errors.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.request
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import orjson
from yarl import URL

from translator.backends import http1
from translator.credentials import Credential
from translator.errors import (MAX_ERROR_BODY, ApiError, upstream_broken, upstream_error_from_body, upstream_not_json,
                               upstream_timeout, upstream_unreachable)

USER_AGENT = "keyrelay-translator/0.1"

# The response interface both clients offer (http1.Response, aiohttp.ClientResponse).
UpstreamResponse = Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: URL
    proxy: URL | None = None  # the proxy from the environment, credentials stripped
    proxy_user: str | None = None
    proxy_password: str | None = None


def env_proxy(url: URL) -> Endpoint:
    """The proxy the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY and their lower-case forms) names for
    `url`, with the rules aiohttp's `trust_env` applies: NO_PROXY wins, only http:// proxies are used."""
    host = url.raw_host or ""
    if urllib.request.proxy_bypass_environment(host):
        return Endpoint(url)
    raw = urllib.request.getproxies_environment().get(url.scheme)
    if not raw:
        return Endpoint(url)
    proxy = URL(raw)
    if proxy.scheme != "http":
        return Endpoint(url)
    return Endpoint(url, proxy.with_user(None), proxy.user, proxy.password)


def event_too_large(provider: str, limit: int) -> ApiError:
    return ApiError(502, "api_error", f"upstream {provider} sent a stream event over {limit} bytes", upstream=True)


def is_transport_error(exc: BaseException) -> bool:
    """Whether `exc` is a failure of either client (aiohttp is only consulted once it was imported)."""
    if isinstance(exc, (http1.HttpError, TimeoutError)):
        return True
    aiohttp = _aiohttp_if_imported()
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


def transport_error(exc: BaseException, provider: str) -> ApiError:
    """Transport failures of either client -> Anthropic-shaped errors (connection failed 502, timeouts 504)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, http1.PoolExhausted):
        return ApiError(529, "overloaded_error",
                        "the translator has no free upstream connection; retry shortly")
    if isinstance(exc, (http1.HeadTooLarge, http1.BodyTooLarge)):
        return ApiError(502, "api_error", f"upstream {provider}: {exc}", upstream=True)
    if isinstance(exc, TimeoutError):  # both clients' connect and read timeouts subclass it
        return upstream_timeout(provider)
    if isinstance(exc, http1.ConnectError):  # refused, DNS, unreachable, TLS
        return upstream_unreachable(provider)
    aiohttp = _aiohttp_if_imported()
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectorError):
        return upstream_unreachable(provider)
    return upstream_broken(provider)


def _aiohttp_if_imported() -> Any:
    import sys

    return sys.modules.get("aiohttp")


class Transport:
    """POSTs to upstream URLs over the pooled http1 client, or over aiohttp when a proxy applies. Create it
    inside the running event loop; `aclose()` at shutdown."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float, max_connections: int,
                 pool_wait_s: float = 5.0, max_head_bytes: int = http1.MAX_HEAD_BYTES,
                 max_head_lines: int = http1.MAX_HEAD_LINES, max_body_bytes: int = 16 << 20,
                 max_event_bytes: int = 4 << 20) -> None:
        self.max_body_bytes = max_body_bytes  # a non-streaming answer, decoded (`read_all`)
        self.max_event_bytes = max_event_bytes  # one SSE event of a streamed answer (enforced by the streams)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self.max_head_lines = max_head_lines
        self.pool = http1.Http1Pool(connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
                                    max_connections=max_connections, pool_wait_s=pool_wait_s,
                                    max_head_bytes=max_head_bytes, max_head_lines=max_head_lines,
                                    user_agent=USER_AGENT)
        self._session: Any = None  # aiohttp.ClientSession, for proxied requests only
        self._endpoints: dict[str, Endpoint] = {}

    def endpoint(self, url: str) -> Endpoint:
        """The parsed URL and its proxy, resolved once per URL (URLs come from configuration, not clients)."""
        hit = self._endpoints.get(url)
        if hit is None:
            hit = self._endpoints[url] = env_proxy(URL(url))
        return hit

    @classmethod
    def from_settings(cls, s: Any) -> "Transport":
        return cls(connect_timeout_s=s.connect_timeout_s, read_timeout_s=s.read_timeout_s,
                   max_connections=s.max_connections, pool_wait_s=s.pool_wait_s,
                   max_head_bytes=s.max_response_head_bytes, max_head_lines=s.max_response_head_lines,
                   max_body_bytes=s.max_response_body_bytes, max_event_bytes=s.max_sse_event_bytes)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], provider: str) -> UpstreamResponse:
        """POST `body`; returns once the response head arrived. Transport failures raise ApiError."""
        ep = self.endpoint(url)
        try:
            if ep.proxy is None:
                return await self.pool.post(ep.url, body, headers)
            return await self._proxied(ep, body, headers)
        except Exception as exc:
            if is_transport_error(exc):
                raise transport_error(exc, provider) from None
            raise

    async def _proxied(self, ep: Endpoint, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        import aiohttp  # noqa: PLC0415 - only a translator that talks through a proxy needs it

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0, keepalive_timeout=60,
                                               ttl_dns_cache=300),
                # connect covers waiting for a pooled connection and connecting; sock_read is the silence
                # allowed between two reads (a streamed answer may take longer than any total timeout).
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s,
                                              sock_connect=self.connect_timeout_s, sock_read=self.read_timeout_s),
                headers={"user-agent": USER_AGENT},
                # No cookie jar: the session is shared by every user's requests, so a cookie one upstream
                # answer set must never ride along on another user's request.
                cookie_jar=aiohttp.DummyCookieJar(),
                # The proxy is resolved here once per URL (`env_proxy`); trust_env would read the proxy
                # variables and ~/.netrc on every request.
                trust_env=False,
                # The same head limits as http1 (aiohttp's own are per line; one line may hold the whole head).
                max_line_size=self.max_head_bytes, max_field_size=self.max_head_bytes,
                max_headers=self.max_head_lines,
                # Bodies are not decompressed here: aiohttp would expand a small gzip without bound. Identity is
                # asked for, and an encoded answer is refused (`_proxied`).
                auto_decompress=False,
            )
        auth = (aiohttp.BasicAuth(ep.proxy_user, ep.proxy_password or "") if ep.proxy_user is not None else None)
        resp = await self._session.post(ep.url, data=body, proxy=ep.proxy, proxy_auth=auth, allow_redirects=False,
                                        headers={**headers, "accept-encoding": "identity"})
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", ""):
            resp.close()
            raise http1.ProtocolError(f"upstream sent a {encoding!r} body through the proxy (identity was asked for)")
        return resp

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.pool.close()


async def read_all(resp: UpstreamResponse, provider: str, limit: int, first: bytes = b"") -> bytes:
    """The whole (decoded) body of a response, at most `limit` bytes (more is a 502 naming the limit);
    transport failures raise ApiError. `first`: the body's first bytes, already taken. Always release or close
    `resp`."""
    parts: list[bytes] = [first] if first else []
    size = len(first)
    try:
        while True:
            data = await resp.content.readany()
            if not data:
                return b"".join(parts)
            size += len(data)
            if size > limit:
                raise http1.BodyTooLarge(f"response body exceeds {limit} bytes")
            parts.append(data)
    except Exception as exc:
        if is_transport_error(exc):
            raise transport_error(exc, provider) from None
        raise


async def json_answer(resp: UpstreamResponse, provider: str, cred: Credential, limit: int) -> Any:
    """The parsed JSON body of a 200 answer, at most `limit` bytes; any other status raises the mapped error,
    a body that is not JSON a 502. Releases or closes `resp`."""
    if resp.status != 200:
        raise await error_from_response(resp, provider, cred)
    content = resp.content
    try:
        # A small answer has usually arrived whole with its head: then it is taken without a read coroutine.
        try:
            raw = content.read_nowait()
        except Exception as exc:
            if is_transport_error(exc):
                raise transport_error(exc, provider) from None
            raise
        if len(raw) > limit:
            raise transport_error(http1.BodyTooLarge(f"response body exceeds {limit} bytes"), provider)
        if not content.at_eof():
            raw = await read_all(resp, provider, limit, raw)
    except BaseException:
        resp.close()
        raise
    resp.release()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise upstream_not_json(provider) from None


async def error_from_response(resp: UpstreamResponse, provider: str, cred: Credential) -> ApiError:
    """The ApiError for a non-200 answer (reads at most MAX_ERROR_BODY bytes of its body, then closes it)."""
    raw = b""
    try:
        while len(raw) <= MAX_ERROR_BODY:
            part = await resp.content.readany()
            if not part:
                break
            raw += part
    except Exception as exc:  # noqa: BLE001 - a failing error body still yields the status's error
        if not is_transport_error(exc):
            raise
    finally:
        resp.close()
    return upstream_error_from_body(resp.status, raw[:MAX_ERROR_BODY], provider=provider, headers=resp.headers,
                                    secrets=[cred.key])


def within_reader(content: Any) -> Callable[[float], Awaitable[bytes]]:
    """`read_within` bound to one body: the http1 client's own (`http1.Body.read_within`, one lazily re-armed
    timer per body instead of one `asyncio.timeout` per read), else the generic one (aiohttp)."""
    if isinstance(content, http1.Body):
        return content.read_within
    return functools.partial(read_within, content)


async def read_within(content: Any, wait: float) -> bytes:
    """The body bytes already buffered, else the next bytes that arrive within `wait` seconds; b"" when none
    did or the body ended (tell them apart with `content.at_eof()`). Bytes buffered are taken without waiting;
    only an empty buffer arms a timer (`asyncio.timeout` on the calling task: no helper task, and a timed-out
    read loses nothing). The client's own read timeout (upstream silent too long) raises TimeoutError."""
    raw = content.read_nowait()
    if raw or wait <= 0 or content.at_eof():
        return raw
    timer = asyncio.timeout(wait)
    try:
        async with timer:
            return await content.readany()
    except TimeoutError:
        if not timer.expired():
            raise  # the client's own read timeout
        return content.read_nowait()  # bytes that arrived just as the timer fired


async def end_response(resp: UpstreamResponse, finished: bool) -> None:
    """Done with a streamed response. A finished one goes back to the pool; an unfinished one (client gone,
    error) closes the connection, which is how the upstream learns to stop generating. After the stream's
    last event the body's end (the last chunk of the chunked encoding) may still be on its way: it is awaited
    up to 0.5 s rather than losing the connection. Never raises."""
    if finished and not resp.content.at_eof():
        try:
            async with asyncio.timeout(0.5):
                while await resp.content.readany():
                    pass
        except Exception as exc:  # noqa: BLE001 - closing never raises
            if not is_transport_error(exc):
                resp.close()
                return
    if finished and resp.content.at_eof():
        resp.release()
    else:
        resp.close()
