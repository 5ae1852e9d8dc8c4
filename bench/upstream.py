"""A fast loopback OpenAI-compatible upstream for the benchmark.

`python -m bench.upstream --port P [--procs N] [--chunks 200]` answers every POST with a pre-encoded
chat.completion, or, when the request body asks for `"stream": true`, with a pre-encoded SSE stream of
`--chunks` small chunks (each its own HTTP chunk), a usage chunk and `data: [DONE]`. A POST to `.../responses`
gets the OpenAI Responses API equivalents: a response object, or the documented event sequence with `--chunks`
`response.output_text.delta` events (for the translator's Responses backend).

Hand-written on asyncio Protocols (uvloop when installed) instead of a framework on purpose: the upstream must
cost far less per request than anything it is compared with, so it does no JSON work per request and writes
each reply with one `transport.write`. It speaks just enough HTTP/1.1 for keep-alive clients (Content-Length
or chunked request bodies). With `--procs N` the listening socket is shared by N forked processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import heapq
import signal
import socket
import sys
import time

MODEL = "gpt-bench"


def completion_body(text: str = "Hello! This is a short benchmark reply.") -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30},
    }, separators=(",", ":")).encode()


def stream_frames(chunks: int) -> list[bytes]:
    """`chunks` content chunks (the first also carries the role), then a finish chunk, a usage chunk, [DONE]."""

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
        obj = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
               "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    frames = [chunk({"role": "assistant", "content": "w0 "})]
    frames += [chunk({"content": f"w{i} "}) for i in range(1, chunks)]
    frames.append(chunk({}, finish="stop"))
    frames.append(chunk({}, usage={"prompt_tokens": 21, "completion_tokens": chunks, "total_tokens": 21 + chunks}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def frames_per_stream(chunks: int) -> int:
    """How many SSE frames `stream_frames(chunks)` sends: the content chunks (at least one, which carries the
    role), a finish chunk, a usage chunk and [DONE]."""
    return max(chunks, 1) + 3


def responses_body(text: str = "Hello! This is a short benchmark reply.") -> bytes:
    return json.dumps(_response_object("completed", [_message_item(text)], chunks=9), separators=(",", ":")).encode()


def _message_item(text: str) -> dict:
    return {"type": "message", "id": "msg_bench", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _response_object(status: str, output: list, chunks: int) -> dict:
    usage = {"input_tokens": 21, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": chunks, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 21 + chunks}
    return {"id": "resp_bench", "object": "response", "created_at": 1700000000, "model": MODEL, "status": status,
            "output": output, "usage": usage if status == "completed" else None, "error": None,
            "incomplete_details": None, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "metadata": {}, "instructions": None, "temperature": None, "top_p": None, "store": False}


def responses_stream_frames(chunks: int) -> list[bytes]:
    """The Responses event sequence for one message of `chunks` text deltas: created, in_progress,
    output_item.added, content_part.added, the deltas, output_text.done, content_part.done, output_item.done,
    completed (no [DONE] in this API)."""
    seq = iter(range(1 << 30))

    def ev(kind: str, **data: object) -> bytes:
        obj = {"type": kind, "sequence_number": next(seq), **data}
        return f"event: {kind}\ndata: ".encode() + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    text = "".join(f"w{i} " for i in range(max(chunks, 1)))
    ids = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    frames = [ev("response.created", response=_response_object("in_progress", [], chunks)),
              ev("response.in_progress", response=_response_object("in_progress", [], chunks)),
              ev("response.output_item.added", output_index=0, item={**_message_item(""), "content": []}),
              ev("response.content_part.added", part={"type": "output_text", "text": "", "annotations": []}, **ids)]
    frames += [ev("response.output_text.delta", delta=f"w{i} ", logprobs=[], **ids) for i in range(max(chunks, 1))]
    frames += [ev("response.output_text.done", text=text, logprobs=[], **ids),
               ev("response.content_part.done", part={"type": "output_text", "text": text, "annotations": []}, **ids),
               ev("response.output_item.done", output_index=0, item=_message_item(text)),
               ev("response.completed", response=_response_object("completed", [_message_item(text)], chunks))]
    return frames


def http_chunk(frame: bytes) -> bytes:
    return f"{len(frame):x}\r\n".encode() + frame + b"\r\n"


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\n\r\n")


def _http(body: bytes, frames: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The non-streaming reply, and the streaming reply as a list of writes: the head with the first frame,
    one HTTP chunk per further frame, the terminating chunk appended to the last."""
    plain = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    parts = [http_chunk(frame) for frame in frames]
    parts[0] = STREAM_HEAD + parts[0]
    parts[-1] += b"0\r\n\r\n"
    return plain, parts


def encode_responses_replies(chunks: int) -> tuple[bytes, list[bytes]]:
    """`encode_replies` for POST .../responses."""
    return _http(responses_body(), responses_stream_frames(chunks))


def encode_replies(chunks: int) -> tuple[bytes, list[bytes]]:
    """`_http` for POST .../chat/completions."""
    return _http(completion_body(), stream_frames(chunks))


class UpstreamProtocol(asyncio.Protocol):
    plain: bytes = b""
    stream: list[bytes] = []
    responses_plain: bytes = b""
    responses_stream: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            consumed = self._one_request()
            if not consumed:
                return
            del self.buf[:consumed]

    def _one_request(self) -> int:
        """Answer one complete request at the start of the buffer; return its length (0: incomplete)."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return 0
        head = bytes(buf[:end]).lower()
        pos = end + 4
        close = b"connection: close" in head
        if b"transfer-encoding: chunked" in head:
            body = bytearray()
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return 0
                size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n", line_end + 2)
                    if trailer_end < 0:
                        return 0
                    pos = trailer_end + 2
                    break
                if len(buf) < line_end + 2 + size + 2:
                    return 0
                body += buf[line_end + 2:line_end + 2 + size]
                pos = line_end + 2 + size + 2
        else:
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15:j if j >= 0 else len(head)])
            if len(buf) < pos + length:
                return 0
            body = buf[pos:pos + length]
            pos += length
        responses = b"/responses " in head[:head.find(b"\r\n")]
        if head.startswith(b"head ") or head.startswith(b"get "):
            self.transport.write(self.plain)  # health probes
        # A byte search rather than json.loads: the upstream must stay cheap for 70 KB bodies.
        elif b'"stream":true' in body or b'"stream": true' in body:
            self.send_stream(responses)
        else:
            self.transport.write(self.responses_plain if responses else self.plain)
        if close:
            self.transport.close()
        return pos

    def send_stream(self, responses: bool) -> None:
        # One write per frame: frames leave as separate segments, as from an upstream that flushes every token
        # (`--stream-writes whole` sends the whole stream with one write instead).
        for part in (self.responses_stream if responses else self.stream):
            self.transport.write(part)


# Paced streams stamp every content chunk with the monotonic clock (shared by all processes of the machine) at
# the moment it is written: `t` + 19 digits of nanoseconds + a space. The scale client reads the stamp back
# from the translated text_delta and charges the difference to the path (bench/scale_client.py).
STAMP_PREFIX = b"t"
STAMP_DIGITS = 19
QUANTUM_NS = 1_000_000


def paced_templates() -> tuple[bytes, bytes, bytes, bytes]:
    """The first content frame (with the role) and every further one, each split around the stamp as
    (prefix, suffix); the stamp is fixed-width so the HTTP chunk size is known in advance."""
    marker = "@" * STAMP_DIGITS

    def chunk(delta: dict) -> bytes:
        obj = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return http_chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

    first = chunk({"role": "assistant", "content": f"t{marker} "})
    other = chunk({"content": f"t{marker} "})
    fa, fb = first.split(marker.encode())
    oa, ob = other.split(marker.encode())
    return STREAM_HEAD + fa, fb, oa, ob


def tool_call_tail(chunks: int) -> bytes:
    """What ends a Claude-Code-shaped turn: one tool call (a tool the Claude Code request declares), the
    finish chunk with tool_calls, usage and [DONE], with the terminating HTTP chunk."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}

    def frame(obj: dict) -> bytes:
        return http_chunk(b"data: " + json.dumps({**base, **obj}, separators=(",", ":")).encode() + b"\n\n")

    call = {"index": 0, "id": "call_bench", "type": "function",
            "function": {"name": "Bash", "arguments": '{"command": "ls -la", "description": "List files"}'}}
    return (frame({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})
            + frame({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
            + frame({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": chunks,
                                              "total_tokens": 21 + chunks}})
            + http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


class Pacer:
    """Writes the content chunks of every open paced stream, one each `interval_ns`, from one timer loop for
    all streams (a heap of due times) instead of a sleeping task per stream: the upstream must stay cheap at
    thousands of concurrent streams. Each stream keeps the phase of its arrival, so writes are spread like
    those of independent upstream streams, not synchronized in bursts."""

    def __init__(self, interval_ms: float, chunks: int) -> None:
        self.interval_ns = int(interval_ms * 1e6)
        self.chunks = max(chunks, 1)
        self.first_a, self.first_b, self.other_a, self.other_b = paced_templates()
        self.tail = tool_call_tail(self.chunks)
        self.heap: list[tuple[int, int, asyncio.Transport, int]] = []
        self.seq = 0
        self.wake: asyncio.Event | None = None

    def add(self, transport: asyncio.Transport) -> None:
        self._write(transport, 0)
        self._push(time.monotonic_ns() + self.interval_ns, transport, 1)

    def _push(self, due: int, transport: asyncio.Transport, index: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, transport, index))
        if self.wake is not None:
            self.wake.set()

    def _write(self, transport: asyncio.Transport, index: int) -> None:
        stamp = b"%019d" % time.monotonic_ns()
        if index == 0:
            transport.write(self.first_a + stamp + self.first_b)
        else:
            transport.write(self.other_a + stamp + self.other_b)

    async def run(self) -> None:
        self.wake = asyncio.Event()
        heap = self.heap
        while True:
            if not heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            # Everything due within the next QUANTUM_NS goes out now: one wake-up per millisecond at most,
            # not one per frame (the stamp is taken at the write, so the measurement is unaffected).
            now = time.monotonic_ns() + QUANTUM_NS
            while heap and heap[0][0] <= now:
                due, _, transport, index = heapq.heappop(heap)
                if transport.is_closing():
                    continue
                self._write(transport, index)
                if index + 1 < self.chunks:
                    self._push(due + self.interval_ns, transport, index + 1)
                else:
                    transport.write(self.tail)
            if heap:
                # At least one quantum: the event loop's timers have millisecond resolution, a shorter sleep
                # would spin.
                await asyncio.sleep(max(QUANTUM_NS, heap[0][0] - QUANTUM_NS - time.monotonic_ns()) / 1e9)


class PacedProtocol(UpstreamProtocol):
    pacer: Pacer

    def send_stream(self, responses: bool) -> None:
        self.pacer.add(self.transport)  # type: ignore[arg-type]  (Chat Completions chunks only)


def serve(sock: socket.socket, chunks: int, stream_writes: str = "frame", interval_ms: float = 0) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    except ImportError:
        pass
    plain, parts = encode_replies(chunks)
    UpstreamProtocol.plain = plain
    UpstreamProtocol.stream = parts if stream_writes == "frame" else [b"".join(parts)]
    r_plain, r_parts = encode_responses_replies(chunks)
    UpstreamProtocol.responses_plain = r_plain
    UpstreamProtocol.responses_stream = r_parts if stream_writes == "frame" else [b"".join(r_parts)]
    protocol: type[UpstreamProtocol] = UpstreamProtocol
    if interval_ms > 0:
        PacedProtocol.pacer = Pacer(interval_ms, chunks)
        protocol = PacedProtocol

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pacer = loop.create_task(PacedProtocol.pacer.run()) if interval_ms > 0 else None
        server = await loop.create_server(protocol, sock=sock, backlog=4096)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()
        if pacer is not None:
            pacer.cancel()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--stream-writes", choices=("frame", "whole"), default="frame",
                    help="frame: one write per SSE frame (default); whole: the stream in one write")
    ap.add_argument("--interval-ms", type=float, default=0,
                    help="paced streams: one time-stamped content chunk every this many ms, then a tool call "
                         "(Claude-Code-shaped turn; the scale section); 0 = as fast as possible (default)")
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.setblocking(False)
    children = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:
            serve(sock, args.chunks, args.stream_writes, args.interval_ms)
            os._exit(0)
        children.append(pid)
    print(f"ready: bench upstream on {args.host}:{args.port} ({args.procs} process(es), {args.chunks} chunks, "
          f"{args.stream_writes} writes)",
          flush=True)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    serve(sock, args.chunks, args.stream_writes, args.interval_ms)
    forward(signal.SIGTERM, None)
    for pid in children:
        os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()
