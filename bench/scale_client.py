"""The scale section's load client: `python -m bench.scale_client` holds many concurrent streaming
/v1/messages requests and measures, for every content chunk, the delay between the moment the upstream wrote it
(the monotonic-clock stamp the paced upstream puts in the chunk's text, bench/upstream.py) and the moment it
arrived here.

Raw asyncio protocols (uvloop when installed) with a minimal HTTP/1.1 response parser, not an HTTP client
library: one process must hold a thousand streams at 20 chunks/s each without becoming what is measured (its
own CPU time is reported). The parent (bench/scale.py) splits the streams over several such processes.

Prints one JSON line (counts, per-status and per-error tallies, own CPU seconds, time to first chunk) and writes
the per-chunk delays (microseconds, int32) to `--delays`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import re
import resource
import time
from collections import Counter
from pathlib import Path

from keyrelay_stack.processes import raise_open_files_limit

# Every stamp in a text delta: the translator may merge chunks that arrive together into one delta.
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def error_message(body: bytes) -> str:
    """The `error.message` of an Anthropic-shaped error body (bounded), else the start of the body."""
    try:
        return str(json.loads(body)["error"]["message"])[:120]
    except (ValueError, KeyError, TypeError):
        return body[:80].decode("utf-8", "replace")


STAMP = re.compile(rb'(?<=[" ])t(\d{19})(?= )')


class Result:
    def __init__(self) -> None:
        self.delays_us = array.array("i")
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.completed = 0
        self.chunks = 0
        self.ttfb_ms: list[float] = []


class StreamProtocol(asyncio.Protocol):
    """One request, one streamed (chunked) response; the SSE payload is scanned for stamps as it arrives."""

    def __init__(self, request: bytes, result: Result, done: asyncio.Future, expected_chunks: int) -> None:
        self.request = request
        self.result = result
        self.done = done
        self.expected = expected_chunks
        self.buf = bytearray()  # undecoded bytes
        self.sse = bytearray()  # decoded payload not yet scanned (ends mid-event)
        self.status = 0
        self.chunk_left = -1  # bytes left of the current HTTP chunk (+2 for its CRLF); -1: expecting a size line
        self.chunks = 0
        self.saw_stop = False
        self.saw_tool = False
        self.saw_error = False
        self.sent_at = 0
        self.error_body_len = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sent_at = time.monotonic_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += data
        if not self.status:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            self.status = int(head.split(b" ", 2)[1])
            del self.buf[:end + 4]
            m = CONTENT_LENGTH.search(head)
            self.error_body_len = int(m.group(1)) if m else 0
        if self.status != 200 or self.error_body_len:
            # An error answer (Envoy's or the translator's, Anthropic-shaped): tally it by its message.
            if len(self.buf) >= min(self.error_body_len, 4096):
                self.finish(f"status {self.status}: {error_message(bytes(self.buf[:4096]))}")
            return
        ended = self._dechunk()
        cut = self.sse.rfind(b"\n\n")
        if cut >= 0:
            self._scan(now, cut)
        if ended:
            self.finish(None)

    def _scan(self, now: int, cut: int) -> None:
        events = bytes(self.sse[:cut + 2])
        del self.sse[:cut + 2]
        delays = self.result.delays_us
        for m in STAMP.finditer(events):
            if not self.chunks:
                self.result.ttfb_ms.append((now - self.sent_at) / 1e6)
            self.chunks += 1
            delays.append((now - int(m.group(1))) // 1000)
        if b"event: message_stop" in events:
            self.saw_stop = True
        if b'"type":"tool_use"' in events:
            self.saw_tool = True
        if b"event: error" in events:
            self.saw_error = True

    def _dechunk(self) -> bool:
        """Move the payload of complete HTTP chunks from buf to sse; True once the last chunk arrived."""
        buf = self.buf
        while buf:
            if self.chunk_left < 0:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    return False
                size = int(bytes(buf[:nl]).split(b";")[0], 16)
                del buf[:nl + 2]
                if size == 0:
                    return True
                self.chunk_left = size + 2
            take = min(self.chunk_left, len(buf))
            self.sse += buf[:take]
            del buf[:take]
            self.chunk_left -= take
            if self.chunk_left == 0:
                del self.sse[-2:]  # the chunk's CRLF
                self.chunk_left = -1
        return False

    def finish(self, error: str | None) -> None:
        if self.done.done():
            return
        r = self.result
        r.statuses[str(self.status or "none")] += 1
        r.chunks += self.chunks
        if error is None:
            if self.saw_error:
                error = "error event"
            elif not self.saw_stop:
                error = "no message_stop"
            elif not self.saw_tool:
                error = "no tool_use block"
            elif self.chunks != self.expected:
                error = f"{self.chunks} of {self.expected} chunks"
        if error is None:
            r.completed += 1
        else:
            r.errors[error] += 1
        self.done.set_result(None)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(f"connection lost ({exc.__class__.__name__ if exc else 'closed'})")


async def one_stream(host: str, port: int, request: bytes, result: Result, start_ns: int, timeout_s: float,
                     expected: int) -> None:
    loop = asyncio.get_running_loop()
    delay = (start_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
    done: asyncio.Future = loop.create_future()
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: StreamProtocol(request, result, done, expected), host, port), 30)
    except (OSError, asyncio.TimeoutError) as exc:
        result.statuses["none"] += 1
        result.errors[f"connect: {exc.__class__.__name__}"] += 1
        return
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout_s)
    except asyncio.TimeoutError:
        proto.finish("timeout")


def build_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(args: argparse.Namespace) -> Result:
    body = Path(args.body).read_bytes()
    request = build_request(args.host, args.port, args.path, json.loads(args.headers), body)
    result = Result()
    step = args.ramp_s * 1e9 / max(args.total, 1)
    tasks = [one_stream(args.host, args.port, request, result, args.start_ns + int(i * step), args.timeout_s,
                        args.chunks)
             for i in range(args.index, args.total, args.procs)]
    await asyncio.gather(*tasks)
    return result


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scale_client")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/messages?beta=true")
    ap.add_argument("--headers", default="{}", help="request headers as a JSON object")
    ap.add_argument("--body", required=True, help="file with the request body")
    ap.add_argument("--total", type=int, required=True, help="streams over all client processes")
    ap.add_argument("--procs", type=int, default=1, help="client processes in all")
    ap.add_argument("--index", type=int, default=0, help="this process: streams index, index+procs, ...")
    ap.add_argument("--start-ns", type=int, required=True, help="time.monotonic_ns() of the first stream")
    ap.add_argument("--ramp-s", type=float, default=5.0, help="streams start evenly spread over this time")
    ap.add_argument("--chunks", type=int, required=True, help="content chunks every stream must deliver")
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--delays", required=True, help="write the per-chunk delays (us, int32) here")
    args = ap.parse_args(argv)
    raise_open_files_limit()  # one socket per stream
    try:
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    except ImportError:
        pass
    t0 = time.monotonic()
    result = asyncio.run(run(args))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(args.delays, "wb") as fh:
        result.delays_us.tofile(fh)
    print(json.dumps({
        "streams": sum(result.statuses.values()), "completed": result.completed, "chunks": result.chunks,
        "statuses": dict(result.statuses), "errors": dict(result.errors),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "wall_s": round(time.monotonic() - t0, 3),
        "ttfb_ms": result.ttfb_ms,
    }), flush=True)


if __name__ == "__main__":
    main()
