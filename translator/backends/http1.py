"""A small pooled HTTP/1.1 client for the HTTP backends: asyncio transports, httptools (llhttp) parsing.

Why not aiohttp for every request: measured in one process against the bench's loopback upstream (uvloop,
16 concurrent tiny POSTs, CPU time per request, two rounds): aiohttp 3.14 with a tuned pooled ClientSession
52.6-53.1 µs, this client 9.6-9.7 µs. With ~120 µs of CPU per tiny request through the whole translator,
aiohttp's request and response machinery (URL, header and cookie handling, timers, tracing hooks) was the
largest single cost. This module keeps only what one POST to an OpenAI-compatible upstream needs:

- parsing is httptools' (llhttp, the parser uvicorn and aiohttp use); TLS is asyncio's (`ssl` context with
  certificate and host name checks); nothing here parses HTTP by hand;
- keep-alive connections pooled per origin (LIFO, dropped when the peer closed them or after `keepalive_s`),
  at most `max_connections` requests in flight, waiting for a slot at most `pool_wait_s` (then `PoolExhausted`);
- the response head is bounded (`max_head_bytes` over all its bytes, `max_head_lines` header lines, 1xx heads
  included): more is `HeadTooLarge`, checked as the bytes arrive, before anything accumulates;
- `connect_timeout_s` covers waiting for a slot and connecting; `read_timeout_s` is the silence allowed while
  waiting for the response head and between body reads (a streamed answer may take longer than any total);
- a body reader with the part of aiohttp's `StreamReader` interface the relay uses (`read_nowait`,
  `readany`, `at_eof`): a read cancelled by the caller's timer loses nothing, buffered bytes stay buffered;
  reading from the socket pauses while more than `_HIGH_WATER` bytes wait unread (slow client);
- `accept-encoding: identity` is sent; gzip/deflate bodies are decoded anyway, on the reader's side and at most
  `DECODE_STEP` bytes per read (a small compressed body cannot expand into memory all at once: a "gzip bomb"
  is only ever as large in memory as what the reader keeps of it).

What it does not do, on purpose: proxies (the backend sends requests that must go through a proxy over
aiohttp), redirects (never followed: the request carries a user's key), cookies (one client serves every
user), retries (a POST is not replayed), HTTP/2, `Expect: 100-continue`.
"""

from __future__ import annotations

import asyncio
import math
import ssl as ssl_mod
import time
import zlib
from collections import deque
from typing import Mapping

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

_HIGH_WATER = 256 * 1024  # unread body bytes at which reading from the socket pauses
_LOW_WATER = 64 * 1024  # ... and resumes
DECODE_STEP = 64 * 1024  # decoded bytes produced per read of a compressed body
MAX_HEAD_BYTES = 64 * 1024
MAX_HEAD_LINES = 100


class HttpError(Exception):
    """Any failure of this client."""


class ConnectError(HttpError):
    """Connecting failed (refused, unreachable, DNS, TLS handshake)."""


class ConnectTimeout(HttpError, TimeoutError):
    """No pool slot or no connection within the connect timeout."""


class ReadTimeout(HttpError, TimeoutError):
    """The upstream was silent for longer than the read timeout."""


class _StopParsing(Exception):
    """Raised inside a parser callback to stop httptools (never leaves this module)."""


class PoolExhausted(HttpError):
    """Every connection slot stayed busy for `pool_wait_s`."""


class HeadTooLarge(HttpError):
    """The response head exceeded `max_head_bytes` or `max_head_lines`."""


class Disconnected(HttpError):
    """The connection closed before the response was complete."""


class ProtocolError(HttpError):
    """The upstream sent something that is not HTTP/1.1, or a header we would send is not a valid value."""


def _check_value(name: str, value: str) -> None:
    """Header names are the caller's constants; values may carry a key from a client or the environment."""
    if "\r" in value or "\n" in value or "\0" in value:
        raise ProtocolError(f"header {name!r} has a value that cannot be sent")  # never echo the value


class Body:
    """The response body as it arrives; the read side of aiohttp's StreamReader that the relay uses."""

    __slots__ = ("_conn", "_chunks", "_size", "_eof", "_exc", "_waiter", "_decoder", "_last", "_flushed",
                 "_timer", "_timer_at", "_wake_at")

    def __init__(self, conn: "_Conn") -> None:
        self._conn = conn
        self._last = conn.loop.time()  # when bytes last arrived: the read timeout counts silence from here
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._decoder = None  # zlib decompressobj for a gzip/deflate body (decoded by the reader, in steps)
        self._flushed = False
        self._timer: asyncio.TimerHandle | None = None  # the reader's one timer (`read_within`)
        self._timer_at = 0.0  # when it fires (loop time)
        self._wake_at = 0.0  # when the waiting reader wants to be woken without bytes (loop time)

    # -- the connection's side

    def _feed(self, data: bytes) -> None:
        self._last = self._conn.loop.time()
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._eof:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._conn.paused:
            self._conn.resume()
        return data

    def _decoded(self) -> bytes:
        """At most DECODE_STEP decoded bytes of a compressed body (b"" when nothing is ready)."""
        d = self._decoder
        src = d.unconsumed_tail
        if not src:
            if not self._chunks:
                if self._exc is not None:
                    raise self._exc
                if self._eof and not self._flushed:
                    self._flushed = True
                    return d.flush(DECODE_STEP)
                return b""
            src = self._take()
        try:
            return d.decompress(src, DECODE_STEP)
        except zlib.error:
            exc = self._exc = ProtocolError("upstream sent a corrupt compressed body")
            self._conn.abort(exc)
            raise exc from None

    def _ready(self) -> bool:
        """Something to hand out (bytes, the end, or an error) without waiting."""
        if self._chunks or self._eof or self._exc is not None:
            return True
        return self._decoder is not None and bool(self._decoder.unconsumed_tail)

    # -- the reader's side

    def at_eof(self) -> bool:
        if not self._eof or self._chunks:
            return False
        d = self._decoder
        return d is None or (self._flushed and not d.unconsumed_tail)

    def read_nowait(self) -> bytes:
        """Everything buffered (b"" when nothing is; at most DECODE_STEP bytes of a compressed body); raises the
        connection's error once the buffer is empty."""
        if self._decoder is not None:
            return self._decoded()
        if not self._chunks:
            if self._exc is not None:
                raise self._exc
            return b""
        return self._take()

    async def readany(self) -> bytes:
        """The next bytes available; b"" at the end of the body. Raises ReadTimeout once the upstream has been
        silent for the read timeout, counted from the last bytes received (not from this call: a caller that
        waits in short slices, as the ping pacing does, still gets the timeout)."""
        return await self.read_within(math.inf)

    async def read_within(self, wait: float) -> bytes:
        """The bytes already buffered, else the next bytes that arrive within `wait` seconds; b"" when none did
        or the body ended (tell them apart with `at_eof()`); ReadTimeout as `readany`. What `transport.read_within`
        does for any body, without an `asyncio.timeout` per call.

        Why a timer of its own: a stream waits for every upstream chunk with a deadline (the next ping, the read
        timeout), and both deadlines move later with every chunk. Arming and cancelling timers per read (an
        `asyncio.timeout` for the ping and a timer for the read timeout) is a large share of the CPU per paced
        chunk (docs/translator.md, Streaming). Here one timer per body is armed lazily: a deadline that moved later leaves it in place,
        and when it fires early it re-arms itself for the current deadline, so a stream receiving a chunk every
        50 ms re-arms it about once per ping interval. Bytes never wait for the timer (they wake the reader
        directly); a cancelled read loses nothing (the bytes stay buffered); `release()`/`close()` cancel it."""
        loop = self._conn.loop
        deadline = loop.time() + wait
        while True:
            while not self._ready():
                now = loop.time()
                expire = self._last + self._conn.read_timeout_s
                if expire <= now:
                    raise ReadTimeout("upstream read timed out")
                wake = expire if expire < deadline else deadline
                if wake <= now:
                    return b""
                self._wake_at = wake
                timer = self._timer
                if timer is None or self._timer_at > wake:
                    if timer is not None:
                        timer.cancel()
                    self._timer = loop.call_at(wake, self._on_timer)
                    self._timer_at = wake
                waiter = self._waiter = loop.create_future()
                try:
                    await waiter  # a cancellation (the caller's own timer) leaves every buffered byte in place
                finally:
                    self._waiter = None
            data = self.read_nowait()
            if data or self.at_eof():
                return data

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # nobody waits: the next wait arms it again
        if self._conn.loop.time() < self._wake_at:  # the deadline moved on since it was armed
            self._timer = self._conn.loop.call_at(self._wake_at, self._on_timer)
            self._timer_at = self._wake_at
            return
        self._wake()  # the reader finds no bytes and checks its deadlines

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole (decoded) body; `BodyTooLarge` as soon as it exceeds `limit` bytes."""
        parts = []
        size = 0
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            size += len(data)
            if limit is not None and size > limit:
                raise BodyTooLarge(f"response body exceeds {limit} bytes")
            parts.append(data)


class BodyTooLarge(HttpError):
    """A body read with a limit exceeded it (after decoding)."""


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout("upstream read timed out"))


class Response:
    """Status and headers of an upstream response; `content` is its body. Always `release()` or `close()`."""

    __slots__ = ("status", "headers", "content", "_conn", "_done")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], conn: "_Conn") -> None:
        self.status = status
        self.headers = headers
        self.content = Body(conn)
        self._conn = conn
        self._done = False

    async def read(self, limit: int | None = None) -> bytes:
        return await self.content.read(limit)

    def release(self) -> None:
        """Done with the response: a completely read body returns the connection to the pool, else it closes."""
        if not self._done:
            self._done = True
            self.content._stop_timer()
            self._conn.finish(reuse=self.content.at_eof())

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.content._stop_timer()
            self._conn.finish(reuse=False)


class _Conn(asyncio.Protocol):
    """One connection: a request is written, the response parsed as it arrives."""

    def __init__(self, pool: "Http1Pool", origin: tuple) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.read_timeout_s = pool.read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.head: asyncio.Future | None = None  # resolves with the Response at the end of the head
        self.resp: Response | None = None
        self.hdrs: list[tuple[str, str]] = []
        self.head_bytes = 0  # bytes received before the final response head completed
        self.head_lines = 0
        self.limit_exc: HttpError | None = None  # a limit crossed inside a parser callback
        self.complete = False  # the current response's message is complete
        self.until_close = False  # body delimited by the connection's end (no length, not chunked)
        self.reusable = False
        self.closed = False
        self.paused = False
        self.idle_since = 0.0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # bytes while idle: the connection is out of step, never reuse it
            self.abort(ProtocolError("upstream sent bytes outside a response"))
            return
        if self.resp is None:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.abort(ProtocolError("upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self.abort(self.limit_exc or ProtocolError(f"upstream sent malformed HTTP ({type(exc).__name__})"))
            return
        if self.resp is None and self.head_bytes > self.pool.max_head_bytes and not self.closed:
            self.abort(HeadTooLarge(f"response head exceeds {self.pool.max_head_bytes} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head is not None and not self.head.done():
            self.head.set_exception(Disconnected("upstream closed the connection before answering"))
        resp = self.resp
        if resp is not None and not self.complete:
            if self.until_close and exc is None:
                self.complete = True
                resp.content._finish()
            else:
                resp.content._fail(Disconnected("upstream closed the connection mid-response"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_lines += 1
        if self.head_lines > self.pool.max_head_lines:
            self.limit_exc = HeadTooLarge(f"response head exceeds {self.pool.max_head_lines} header lines")
            raise _StopParsing()  # httptools stops parsing; data_received aborts with `limit_exc`
        self.hdrs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:  # 1xx (never asked for): wait for the final response
            self.hdrs = []
            return
        if self.resp is not None:
            self.abort(ProtocolError("upstream sent a second response to one request"))
            return
        headers = CIMultiDict(self.hdrs)
        self.hdrs = []
        resp = self.resp = Response(status, CIMultiDictProxy(headers), self)
        self.until_close = (status not in (204, 304) and "content-length" not in headers
                            and "chunked" not in headers.get("transfer-encoding", "").lower())
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            resp.content._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            resp.content._decoder = zlib.decompressobj()
        elif encoding not in ("identity", ""):
            self.abort(ProtocolError(f"upstream sent an unsupported content-encoding {encoding!r}"))
            return
        if self.head is not None and not self.head.done():
            self.head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        if self.resp is not None and not self.complete:  # never the body of a response after this one
            self.resp.content._feed(body)

    def on_message_complete(self) -> None:
        if self.resp is None or self.complete:
            return  # the end of a 1xx, or of a response after this one
        self.complete = True
        self.reusable = self.parser.should_keep_alive() and not self.until_close
        self.resp.content._finish()

    # -- the pool's side

    def send(self, data: bytes) -> asyncio.Future:
        self.parser = httptools.HttpResponseParser(self)
        self.head = self.loop.create_future()
        self.resp = None
        self.head_bytes = self.head_lines = 0
        self.limit_exc = None
        self.complete = self.reusable = self.until_close = False
        self.transport.write(data)
        return self.head

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self, exc: HttpError) -> None:
        """Fail what is waiting on this connection with `exc` and close it."""
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        if self.resp is not None and not self.complete:
            self.resp.content._fail(exc)
            self.complete = True  # nothing more is read
        self.closed = True
        self.hdrs = []
        if self.transport is not None:
            self.transport.close()

    def finish(self, *, reuse: bool) -> None:
        """The caller is done with the current response."""
        # Drop every reference of this response (the parser refers back to this protocol, the response's body
        # too): nothing of a finished request may wait for the cycle collector.
        self.head = None
        self.resp = None
        self.parser = None
        self.hdrs = []
        self.limit_exc = None
        self.pool._done(self, reuse and self.complete and self.reusable and not self.closed)


class Http1Pool:
    """Pooled keep-alive HTTP/1.1 connections; create it inside the running event loop, `close()` at shutdown."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float, max_connections: int,
                 pool_wait_s: float | None = None, max_head_bytes: int = MAX_HEAD_BYTES,
                 max_head_lines: int = MAX_HEAD_LINES, keepalive_s: float = 60.0,
                 user_agent: str = "keyrelay-translator/0.1", ssl_context: ssl_mod.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout_s = connect_timeout_s
        self.pool_wait_s = connect_timeout_s if pool_wait_s is None else pool_wait_s
        self.max_head_bytes = max_head_bytes
        self.max_head_lines = max_head_lines
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self.user_agent = user_agent
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple, list[_Conn]] = {}
        self._active: set[_Conn] = set()

    def _ssl_context(self) -> ssl_mod.SSLContext:
        if self._ssl is None:
            # As aiohttp does: the system trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured), host names
            # checked, ALPN offering only HTTP/1.1. Built on first use (~20 ms, once per worker) so that a
            # translator with only plain-http upstreams never pays for it.
            ctx = ssl_mod.create_default_context()
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl = ctx
        return self._ssl

    async def _connect(self, origin: tuple) -> _Conn:
        scheme, host, port = origin
        ssl = self._ssl_context() if scheme == "https" else None
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self, origin), host, port, ssl=ssl,
                                                        server_hostname=host if ssl else None)
        except (OSError, ssl_mod.SSLError) as exc:
            raise ConnectError(f"cannot connect to {host}:{port} ({type(exc).__name__})") from None
        return conn

    def _pooled(self, origin: tuple) -> _Conn | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.transport.close()
        return None

    async def post(self, url: URL, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST `body` to `url`; returns once the response head arrived (the body streams through `content`)."""
        host = url.raw_host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.scheme, host, port)
        if url.scheme not in ("http", "https") or not host:
            raise ProtocolError(f"cannot send to {url.scheme}:// URLs")
        lines = [f"POST {url.raw_path_qs} HTTP/1.1",
                 f"host: {url.raw_authority.rpartition('@')[2]}",
                 f"user-agent: {self.user_agent}",
                 "accept-encoding: identity",
                 f"content-length: {len(body)}"]
        for name, value in headers.items():
            _check_value(name, value)
            lines.append(f"{name}: {value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(self.pool_wait_s):
                    await slots.acquire()
            except TimeoutError:
                raise PoolExhausted(f"no upstream connection slot free within {self.pool_wait_s} s") from None
        else:
            await slots.acquire()
        try:
            conn = self._pooled(origin)
            if conn is None:
                try:
                    async with asyncio.timeout(self.connect_timeout_s):
                        conn = await self._connect(origin)
                except TimeoutError:
                    raise ConnectTimeout(f"connecting to {host}:{port} timed out") from None
            self._active.add(conn)
        except BaseException:
            slots.release()
            raise
        head = conn.send(request)
        timer = self.loop.call_later(self.read_timeout_s, _expire, head)
        try:
            return await head
        except BaseException:
            conn.abort(Disconnected("request abandoned"))
            conn.finish(reuse=False)
            # The exception's traceback keeps this frame: it must not keep the future that holds the exception
            # (a reference cycle, freed only by the cycle collector, with everything the connection held).
            timer.cancel()
            head = timer = None
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _done(self, conn: _Conn, reuse: bool) -> None:
        if conn in self._active:
            self._active.discard(conn)
            self._slots.release()
        if reuse:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            conn.closed = True
            conn.transport.close()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.transport.close()
        self._idle.clear()
        for conn in list(self._active):
            conn.abort(Disconnected("client closed"))
        await asyncio.sleep(0)  # let the transports run their close callbacks
