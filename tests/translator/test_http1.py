"""translator.backends.http1 against real loopback servers that answer with scripted bytes: body framings,
keep-alive reuse and when a connection must not be reused, timeouts, broken upstreams, the pool limit, flow
control, TLS with certificate checks, and what goes on the wire."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field

import pytest
from yarl import URL

from translator.backends import http1


@dataclass
class Answer:
    data: bytes = b""
    then: str = "keep"  # keep | close (after writing) | hang (write, then say nothing more)


@dataclass
class RawUpstream:
    """A loopback server answering each request with the next scripted `Answer`; records request heads and
    bodies and how many connections were opened."""

    answers: list[Answer] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    ssl_ctx: ssl.SSLContext | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                self.heads.append(head)
                length = next((int(v) for k, _, v in (ln.partition(": ") for ln in head.split("\r\n")[1:])
                               if k.lower() == "content-length"), 0)
                self.bodies.append(await reader.readexactly(length))
                answer = self.answers.pop(0)
                writer.write(answer.data)
                await writer.drain()
                if answer.then == "close":
                    break
                if answer.then == "hang":
                    await asyncio.sleep(3600)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> "RawUpstream":
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.ssl_ctx)
        port = self.server.sockets[0].getsockname()[1]
        self.url = URL(f"{'https' if self.ssl_ctx else 'http'}://127.0.0.1:{port}/v1/chat/completions?x=1")
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def pool(**kw) -> http1.Http1Pool:
    opts = {"connect_timeout_s": 2.0, "read_timeout_s": 2.0, "max_connections": 8} | kw
    return http1.Http1Pool(**opts)


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), head.encode(), body)


def chunked(*parts: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


GZ = gzip.compress(b'{"zipped": true}')

# name, the two answers for two requests in a row, expected bodies, connections the two requests used
FRAMINGS = [
    ("content-length", [Answer(ok(b"one")), Answer(ok(b"two"))], [b"one", b"two"], 1),
    ("chunked", [Answer(chunked(b"o", b"ne")), Answer(chunked(b"two"))], [b"one", b"two"], 1),
    ("until close", [Answer(b"HTTP/1.1 200 OK\r\n\r\none", "close"), Answer(ok(b"two"))], [b"one", b"two"], 2),
    ("connection: close", [Answer(ok(b"one", "connection: close")), Answer(ok(b"two"))], [b"one", b"two"], 2),
    ("HTTP/1.0", [Answer(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\none"), Answer(ok(b"two"))],
     [b"one", b"two"], 2),
    ("gzip", [Answer(ok(GZ, "content-encoding: gzip")), Answer(ok(b"two"))], [b'{"zipped": true}', b"two"], 1),
    ("100 continue first", [Answer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"one")), Answer(ok(b"two"))],
     [b"one", b"two"], 1),
    ("empty body", [Answer(ok(b"")), Answer(ok(b"two"))], [b"", b"two"], 1),
]


@pytest.mark.parametrize("name,answers,bodies,connections", FRAMINGS, ids=[f[0] for f in FRAMINGS])
async def test_body_framings_and_connection_reuse(name, answers, bodies, connections):
    async with RawUpstream(answers=list(answers)) as up:
        p = pool()
        got = []
        for _ in bodies:
            resp = await p.post(up.url, b"{}", {"content-type": "application/json"})
            assert resp.status == 200
            got.append(await resp.read())
            resp.release()
        await p.close()
    assert got == bodies
    assert up.connections == connections


async def test_what_goes_on_the_wire():
    async with RawUpstream(answers=[Answer(ok(b"{}"))]) as up:
        p = pool()
        resp = await p.post(up.url, b'{"a":1}', {"content-type": "application/json", "authorization": "Bearer k1"})
        await resp.read()
        resp.release()
        await p.close()
    lines = up.heads[0].split("\r\n")
    assert lines[0] == "POST /v1/chat/completions?x=1 HTTP/1.1"
    headers = dict(ln.split(": ", 1) for ln in lines[1:] if ln)
    assert headers == {"host": f"127.0.0.1:{up.url.port}", "user-agent": "keyrelay-translator/0.1",
                       "accept-encoding": "identity", "content-length": "7",
                       "content-type": "application/json", "authorization": "Bearer k1"}
    assert up.bodies == [b'{"a":1}']


async def test_response_headers_are_case_insensitive():
    async with RawUpstream(answers=[Answer(ok(b"", "Retry-After: 7", "X-A: 1", "x-a: 2"))]) as up:
        p = pool()
        resp = await p.post(up.url, b"", {})
        resp.release()
        await p.close()
    assert resp.headers["retry-after"] == "7"
    assert resp.headers.getall("X-A") == ["1", "2"]


@pytest.mark.parametrize("value", ["Bearer a\r\nx-evil: 1", "Bearer a\nb", "a\0b"])
async def test_a_header_value_that_would_split_the_request_is_refused_before_sending(value):
    async with RawUpstream() as up:
        p = pool()
        with pytest.raises(http1.ProtocolError) as exc:
            await p.post(up.url, b"", {"authorization": value})
        await p.close()
    assert up.connections == 0
    assert value not in str(exc.value)


# name, what the upstream does, the error the request (or reading its body) raises
FAILURES = [
    ("not HTTP", Answer(b"garbage\r\n\r\n"), http1.ProtocolError),
    ("closes before answering", Answer(b"", "close"), http1.Disconnected),
    ("closes mid-body", Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", "close"), http1.Disconnected),
    ("closes mid-chunk", Answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", "close"),
     http1.Disconnected),
    ("silent", Answer(b"", "hang"), http1.ReadTimeout),
    ("silent mid-body", Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab", "hang"), http1.ReadTimeout),
    ("corrupt gzip", Answer(ok(b"not gzip at all", "content-encoding: gzip")), http1.ProtocolError),
    ("unknown encoding", Answer(ok(b"x", "content-encoding: br")), http1.ProtocolError),
]


@pytest.mark.parametrize("name,answer,error", FAILURES, ids=[f[0] for f in FAILURES])
async def test_broken_upstreams_raise_a_client_error(name, answer, error):
    async with RawUpstream(answers=[answer]) as up:
        p = pool(read_timeout_s=0.3)
        with pytest.raises(error):
            resp = await p.post(up.url, b"", {})
            try:
                await resp.read()
            finally:
                resp.close()
        assert not p._active  # the slot went back
        await p.close()


async def test_read_timeout_counts_silence_not_calls():
    # Reads in 0.1 s slices (as the ping pacing does) still end with ReadTimeout after 0.4 s of silence.
    async with RawUpstream(answers=[Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab", "hang")]) as up:
        p = pool(read_timeout_s=0.4)
        resp = await p.post(up.url, b"", {})
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await resp.content.readany() == b"ab"
        with pytest.raises(http1.ReadTimeout):
            while True:
                try:
                    async with asyncio.timeout(0.1):
                        await resp.content.readany()
                except TimeoutError as exc:
                    if isinstance(exc, http1.ReadTimeout):
                        raise
        assert 0.35 < loop.time() - start < 1.5
        resp.close()
        await p.close()


async def test_connection_refused_is_a_connect_error():
    async with RawUpstream() as up:
        url = up.url
    p = pool()
    with pytest.raises(http1.ConnectError):
        await p.post(url, b"", {})
    await p.close()


async def test_an_idle_connection_the_upstream_closed_is_not_reused():
    async with RawUpstream(answers=[Answer(ok(b"one"), "close"), Answer(ok(b"two"))]) as up:
        p = pool()
        resp = await p.post(up.url, b"", {})  # the server closes after answering, the client pools the connection
        assert await resp.read() == b"one"
        resp.release()
        await asyncio.sleep(0.05)  # the FIN arrives
        resp = await p.post(up.url, b"", {})
        assert await resp.read() == b"two"
        resp.release()
        await p.close()
    assert up.connections == 2


async def test_the_pool_limit_queues_requests_up_to_the_pool_wait():
    async with RawUpstream(answers=[Answer(ok(b"one")), Answer(ok(b"two"))]) as up:
        p = pool(max_connections=1, pool_wait_s=0.2)
        first = await p.post(up.url, b"", {})
        with pytest.raises(http1.PoolExhausted):
            await p.post(up.url, b"", {})  # the only slot is taken by `first`
        waiting = asyncio.ensure_future(p.post(up.url, b"", {}))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert await first.read() == b"one"
        first.release()
        second = await waiting
        assert await second.read() == b"two"
        second.release()
        await p.close()
    assert up.connections == 1


async def test_a_cancelled_request_closes_its_connection_and_frees_its_slot():
    async with RawUpstream(answers=[Answer(b"", "hang"), Answer(ok(b"two"))]) as up:
        p = pool(max_connections=1)
        task = asyncio.ensure_future(p.post(up.url, b"", {}))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        resp = await p.post(up.url, b"", {})
        assert await resp.read() == b"two"
        resp.release()
        await p.close()
    assert up.connections == 2


async def test_reading_pauses_while_the_reader_falls_behind_and_nothing_is_lost():
    body = bytes(range(256)) * 8192  # 2 MiB
    async with RawUpstream(answers=[Answer(ok(body))]) as up:
        p = pool()
        resp = await p.post(up.url, b"", {})
        await asyncio.sleep(0.2)  # the reader reads nothing for a while
        conn = resp._conn
        assert conn.paused and not conn.transport.is_reading()
        assert resp.content._size < 1024 * 1024
        assert await resp.read() == body
        resp.release()
        await p.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed: cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


async def test_https_checks_the_certificate(tls_files):
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with RawUpstream(answers=[Answer(ok(b"secure")), Answer(ok(b"again"))], ssl_ctx=server_ctx) as up:
        untrusting = pool()  # the system trust store does not know the test certificate
        with pytest.raises(http1.ConnectError):
            await untrusting.post(up.url, b"", {})
        await untrusting.close()
        trusting = pool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        for expected in (b"secure", b"again"):
            resp = await trusting.post(up.url, b"", {})
            assert await resp.read() == expected
            resp.release()
        await trusting.close()
    # The refused handshake never became a connection; both requests then shared one pooled TLS connection.
    assert len(up.heads) == 2 and up.connections == 1


# ------------------------------------------------------------------ read_within (the streams' paced read)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Drip(RawUpstream):
    """Answers one request with a chunked head, then writes each (delay, bytes) step; `None` bytes end the body."""

    def __init__(self, steps: list[tuple[float, bytes | None]]) -> None:
        super().__init__()
        self.steps = steps

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for delay, data in self.steps:
                await asyncio.sleep(delay)
                writer.write(b"0\r\n\r\n" if data is None else _chunk(data))
                await writer.drain()
            await asyncio.sleep(3600)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


# name, upstream steps, the reads (wait s) and what each returns: bytes, b"" (nothing in time), "eof", or an
# exception type
READS = [
    ("bytes within the wait", [(0.05, b"one")], [(1.0, b"one")]),
    ("nothing within the wait, then the bytes (none lost)", [(0.3, b"late")], [(0.05, b""), (1.0, b"late")]),
    ("a wait of zero takes only what is buffered", [(0.1, b"now")], [(0.0, b""), (1.0, b"now"), (0.0, b"")]),
    ("the body's end", [(0.0, b"a"), (0.0, None)], [(1.0, b"a"), (1.0, "eof")]),
    ("silence past the read timeout, read in slices", [(0.0, b"a")],
     [(1.0, b"a")] + [(0.1, b"")] * 3 + [(0.5, http1.ReadTimeout)]),
]


@pytest.mark.parametrize("name,steps,reads", READS, ids=[r[0] for r in READS])
async def test_read_within(name, steps, reads):
    async with Drip(steps) as up:
        p = pool(read_timeout_s=0.45)
        resp = await p.post(up.url, b"", {})
        try:
            for wait, expect in reads:
                if isinstance(expect, type):
                    with pytest.raises(expect):
                        await resp.content.read_within(wait)
                    continue
                got = await resp.content.read_within(wait)
                if expect == "eof":
                    assert got == b"" and resp.content.at_eof()
                else:
                    assert got == expect
                    assert not resp.content.at_eof() or got
        finally:
            resp.close()
        assert resp.content._timer is None  # closing the response cancels the body's timer
        await p.close()


async def test_read_within_keeps_one_timer_while_its_deadline_moves_later():
    # A chunk every 20 ms, read with a deadline 1 s after each read: the first wait arms the timer, the later
    # ones (whose deadlines are later) leave it in place instead of arming one per read.
    async with Drip([(0.02, b"x%d" % i) for i in range(10)] + [(0.0, None)]) as up:
        p = pool()
        resp = await p.post(up.url, b"", {})
        timers: list = []  # the handles themselves (kept alive, so no two can share an id)
        while True:
            data = await resp.content.read_within(1.0)
            timer = resp.content._timer
            if timer is not None and not any(t is timer for t in timers):
                timers.append(timer)
            if not data and resp.content.at_eof():
                break
        assert len(timers) == 1
        resp.release()
        assert resp.content._timer is None
        await p.close()


async def test_a_cancelled_read_within_loses_nothing():
    async with Drip([(0.2, b"kept")]) as up:
        p = pool()
        resp = await p.post(up.url, b"", {})
        task = asyncio.ensure_future(resp.content.read_within(5.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await resp.content.read_within(1.0) == b"kept"
        resp.close()
        await p.close()
