"""The native OpenAI path's upstream clients (http1 direct, aiohttp through a proxy) and the serving protocol,
against real loopback servers: pings in silences without losing bytes, pooled connections reused after a
finished stream and closed after an abandoned one, proxy variables honoured, and the response head sent with
the first body bytes."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import orjson
import pytest

from tests.support.upstream import ScriptedUpstream, openai_chunk, openai_stream
from translator.credentials import Credential
from translator.errors import ApiError
from translator.backends.openai_chat import OpenAIChatClient
from translator.backends.transport import Transport
from translator.routing import Target
from translator.serving import HeadCoalescingTransport

CRED = Credential("sk-upstream-client-test-0001", "bearer", "abc")


def target(base_url: str) -> Target:
    from types import MappingProxyType
    return Target("openai", "openai", "gpt-test", base_url, MappingProxyType({}), "required")


def sse_chunks(n: int) -> list[bytes]:
    """n content chunks and [DONE] as HTTP chunks, then the terminating chunk."""
    frames = [b"data: " + orjson.dumps(openai_chunk({"content": f"w{i} "})) + b"\n\n" for i in range(n)]
    frames.append(b"data: [DONE]\n\n")
    return [b"%x\r\n%s\r\n" % (len(f), f) for f in frames] + [b"0\r\n\r\n"]


@dataclass
class MiniUpstream:
    """A keep-alive HTTP/1.1 server on loopback that answers every request with a fixed SSE stream (chunked)
    and records each request line and the connection it came on."""

    frames: int = 3
    frame_delay_s: float = 0.0  # 0: the whole stream in one write
    connections: int = 0
    request_lines: list[str] = field(default_factory=list)
    closed: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                self.request_lines.append(lines[0])
                length = next((int(v) for k, _, v in (ln.partition(": ") for ln in lines[1:])
                               if k.lower() == "content-length"), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                chunks = sse_chunks(self.frames)
                if not self.frame_delay_s:
                    chunks = [b"".join(chunks)]
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    if self.frame_delay_s:
                        await asyncio.sleep(self.frame_delay_s)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed += 1
        finally:
            writer.close()

    async def __aenter__(self) -> "MiniUpstream":
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()


@contextlib.asynccontextmanager
async def backend(*, read_timeout_s: float = 30, max_connections: int = 8):
    """The OpenAI client on the transport as the app builds it: http1 for direct requests, aiohttp for proxied
    ones."""
    transport = Transport(connect_timeout_s=5, read_timeout_s=read_timeout_s, max_connections=max_connections)
    try:
        yield OpenAIChatClient(transport)
    finally:
        await transport.aclose()


async def drain(stream, interval: float = 5.0) -> list:
    out = []
    try:
        async for item in stream.paced_batches(interval):
            out.append(item)
    finally:
        await stream.aclose()
    return out


async def test_finished_streams_reuse_one_pooled_connection():
    async with MiniUpstream(frames=3) as up, backend() as b:
        for _ in range(3):
            items = await drain(await b.open_stream(target(up.url), {"stream": True}, CRED))
            chunks = [c for batch in items for c in batch]
            assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["w0 ", "w1 ", "w2 "]
        assert up.connections == 1
        assert up.request_lines == ["POST /v1/chat/completions HTTP/1.1"] * 3


async def test_an_abandoned_stream_closes_its_connection():
    async with MiniUpstream(frames=20, frame_delay_s=0.01) as up, backend() as b:
        stream = await b.open_stream(target(up.url), {"stream": True}, CRED)
        async for _ in stream.paced_batches(5.0):
            break  # the client went away after the first read
        await stream.aclose()
        items = await drain(await b.open_stream(target(up.url), {"stream": True}, CRED))
        assert sum(len(b) for b in items) == 20
        assert up.connections == 2  # the abandoned connection was not handed to the next request


async def test_silence_yields_pings_and_loses_no_bytes():
    # Frames 0.35 s apart, pings every 0.1 s: many reads time out, and every chunk still arrives, in order.
    chunks = [openai_chunk({"content": f"p{i}"}) for i in range(4)]
    reply = openai_stream(chunks)
    reply.frame_delay_s = 0.35
    with ScriptedUpstream() as up:
        up.push(reply)
        async with backend() as b:
            stream = await b.open_stream(target(up.url + "/v1"), {"stream": True}, CRED)
            items = await drain(stream, interval=0.1)
    got = [c["choices"][0]["delta"]["content"] for batch in items if batch is not None for c in batch]
    assert got == ["p0", "p1", "p2", "p3"]
    pings = [i for i, item in enumerate(items) if item is None]
    assert len(pings) >= 4


async def test_session_read_timeout_is_an_upstream_timeout_not_a_ping():
    reply = openai_stream([openai_chunk({"content": "a"}), openai_chunk({"content": "b"})])
    reply.frame_delay_s = 2.0
    with ScriptedUpstream() as up:
        up.push(reply)
        async with backend(read_timeout_s=0.3) as b:
            stream = await b.open_stream(target(up.url + "/v1"), {"stream": True}, CRED)
            with pytest.raises(ApiError) as exc:
                await drain(stream, interval=0.1)
    assert (exc.value.status, exc.value.message) == (504, "upstream openai timed out")


@pytest.mark.parametrize("body", [
    b"data: [1, 2]\n\n",  # a complete event that is not a JSON object
    b"data: {not json\n\n",
    b"data: 7",  # completed only by the end of the body
    b"data: {not json",
])
async def test_a_malformed_stream_chunk_is_a_502(body):
    from tests.support.upstream import Reply

    first = b"data: " + orjson.dumps(openai_chunk({"content": "ok"})) + b"\n\n"
    with ScriptedUpstream() as up:
        up.push(Reply(raw=first + body, headers={"content-type": "text/event-stream"}))
        async with backend() as b:
            stream = await b.open_stream(target(up.url + "/v1"), {"stream": True}, CRED)
            with pytest.raises(ApiError) as exc:
                await drain(stream)
    assert (exc.value.status, exc.value.message) == (502, "upstream openai sent a malformed stream chunk")


@pytest.mark.parametrize("no_proxy,via_proxy", [("", True), ("127.0.0.1", False)])
async def test_proxy_variables_are_honoured(monkeypatch, no_proxy, via_proxy):
    async with MiniUpstream() as proxy, MiniUpstream() as direct:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.rsplit("/v1", 1)[0])
        monkeypatch.setenv("NO_PROXY", no_proxy)
        monkeypatch.delenv("http_proxy", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with backend() as b:
            items = await drain(await b.open_stream(target(direct.url), {"stream": True}, CRED))
        assert sum(len(b) for b in items) == 3
        if via_proxy:
            # A proxy gets the absolute URL of the upstream in the request line.
            assert proxy.request_lines == [f"POST {direct.url}/chat/completions HTTP/1.1"]
            assert direct.request_lines == []
        else:
            assert proxy.request_lines == []
            assert direct.request_lines == ["POST /v1/chat/completions HTTP/1.1"]


# ------------------------------------------------------------------ the serving protocol's transport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1234)}.get(name, default)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


@pytest.mark.parametrize("writes,expected", [
    ([HEAD, b"{}"], [HEAD + b"{}"]),  # head and body: one write
    ([b"data", b"more"], [b"data", b"more"]),  # not a head: straight through
    ([HEAD, b"a", b"b"], [HEAD + b"a", b"b"]),  # only the first body joins the head
    ([HEAD + b"x", HEAD], [HEAD + b"x" + HEAD]),  # two pipelined responses stay in order
])
async def test_head_is_joined_with_the_next_write(writes, expected):
    t = RecordingTransport()
    wrapped = HeadCoalescingTransport(t, asyncio.get_running_loop())
    for w in writes:
        wrapped.write(w)
    await asyncio.sleep(0)
    assert t.writes == expected


async def test_a_head_without_body_goes_out_at_the_end_of_the_iteration_and_before_close():
    t = RecordingTransport()
    wrapped = HeadCoalescingTransport(t, asyncio.get_running_loop())
    wrapped.write(HEAD)
    assert t.writes == []
    await asyncio.sleep(0)
    assert t.writes == [HEAD]
    wrapped.write(HEAD)
    wrapped.close()
    assert t.writes == [HEAD, HEAD] and t.closed
    assert wrapped.get_extra_info("peername") == ("127.0.0.1", 1234)  # everything else is the transport's


async def test_a_cookie_set_by_the_upstream_never_rides_on_later_requests():
    # One session serves every user's requests: a Set-Cookie from one answer must not reach the next request.
    from tests.support.upstream import openai_completion

    first = openai_completion("one")
    first.headers["set-cookie"] = "session=user-a-secret; Path=/"
    with ScriptedUpstream() as up:
        up.push(first, openai_completion("two"))
        async with backend() as b:
            for _ in range(2):
                await b.complete(target(up.url + "/v1"), {"model": "gpt-test"}, CRED)
        assert len(up.requests) == 2
        assert "cookie" not in up.requests[1].headers


async def test_a_redirect_is_not_followed():
    # The request carries a user's key: it is never replayed to wherever a Location header points.
    from tests.support.upstream import Reply

    with ScriptedUpstream() as up:
        up.push(Reply(status=307, headers={"location": up.url + "/elsewhere"}, raw=b""))
        async with backend() as b:
            with pytest.raises(ApiError) as exc:
                await b.complete(target(up.url + "/v1"), {"model": "gpt-test"}, CRED)
        assert [r.path for r in up.requests] == ["/v1/chat/completions"]
    assert exc.value.status == 502 and exc.value.upstream


async def test_an_exhausted_pool_answers_overloaded_not_a_timeout():
    async with MiniUpstream(frames=50, frame_delay_s=0.05) as up:
        transport = Transport(connect_timeout_s=5, read_timeout_s=30, max_connections=1, pool_wait_s=0.2)
        client = OpenAIChatClient(transport)
        try:
            held = await client.open_stream(target(up.url), {"stream": True}, CRED)  # the only slot
            with pytest.raises(ApiError) as exc:
                await client.open_stream(target(up.url), {"stream": True}, CRED)
            assert (exc.value.status, exc.value.type) == (529, "overloaded_error")
            await held.aclose()
            await drain(await client.open_stream(target(up.url), {"stream": True}, CRED))  # the slot is back
        finally:
            await transport.aclose()


async def test_a_failed_response_leaves_no_garbage_for_the_cycle_collector():
    # The serving process freezes the GC and rarely collects its oldest generation: every object of a failed
    # upstream exchange must be freed by reference counting alone.
    import gc

    from translator.backends import http1

    async def endless_head(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"x-h: v\r\n" * 500)
        await writer.drain()

    server = await asyncio.start_server(endless_head, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"

    def alive() -> int:
        return sum(isinstance(o, (http1._Conn, http1.Response, http1.Body)) for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = alive()
        async with backend() as client:
            for _ in range(3):
                try:
                    await client.complete(target(url), {"model": "gpt-test"}, CRED)
                except ApiError as exc:
                    assert exc.status == 502 and "header lines" in exc.message
                    exc.__context__ = exc.__traceback__ = None  # what the service does when a request finishes
                else:
                    raise AssertionError("no error")
            await asyncio.sleep(0.05)  # the transports' close callbacks
            assert alive() == before
    finally:
        gc.enable()
        server.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(150)) + b"content-length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 100_000 + b"\r\ncontent-length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 2\r\n\r\n{}",
])
async def test_requests_through_a_proxy_have_the_same_head_limits_and_no_decompression(monkeypatch, answer):
    seen: list[bytes] = []

    async def proxy(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        async with backend() as client:
            with pytest.raises(ApiError) as exc:
                await client.complete(target("http://upstream.invalid/v1"), {"model": "gpt-test"}, CRED)
        assert exc.value.status == 502 and exc.value.upstream and "unreachable" not in exc.value.message
        assert len(seen) == 1 and b"accept-encoding: identity" in seen[0].lower()
    finally:
        server.close()
