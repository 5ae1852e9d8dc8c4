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
import signal
import socket
import sys

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


def _http(body: bytes, frames: list[bytes]) -> tuple[bytes, list[bytes]]:
    plain = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    parts = [f"{len(frame):x}\r\n".encode() + frame + b"\r\n" for frame in frames]
    parts[0] = head + parts[0]
    parts[-1] += b"0\r\n\r\n"
    return plain, parts


def encode_responses_replies(chunks: int) -> tuple[bytes, list[bytes]]:
    """`encode_replies` for POST .../responses."""
    return _http(responses_body(), responses_stream_frames(chunks))


def encode_replies(chunks: int) -> tuple[bytes, list[bytes]]:
    """The non-streaming reply, and the streaming reply as a list of writes: the head with the first frame,
    one HTTP chunk per further frame, the terminating chunk appended to the last."""
    body = completion_body()
    plain = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    parts = [f"{len(frame):x}\r\n".encode() + frame + b"\r\n" for frame in stream_frames(chunks)]
    parts[0] = head + parts[0]
    parts[-1] += b"0\r\n\r\n"
    return plain, parts


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
        if head.startswith(b"head ") or head.startswith(b"get "):
            self.transport.write(self.plain)  # health probes
        else:
            # A byte search rather than json.loads: the upstream must stay cheap for 70 KB bodies.
            wants_stream = b'"stream":true' in body or b'"stream": true' in body
            responses = b"/responses " in head[:head.find(b"\r\n")]
            if wants_stream:
                # One write per frame: frames leave as separate segments, as from an upstream that flushes
                # every token (`--stream-writes whole` sends the whole stream with one write instead).
                for part in (self.responses_stream if responses else self.stream):
                    self.transport.write(part)
            else:
                self.transport.write(self.responses_plain if responses else self.plain)
        if close:
            self.transport.close()
        return pos


def serve(sock: socket.socket, chunks: int, stream_writes: str = "frame") -> None:
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

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(UpstreamProtocol, sock=sock, backlog=1024)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--stream-writes", choices=("frame", "whole"), default="frame",
                    help="frame: one write per SSE frame (default); whole: the stream in one write")
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    sock.setblocking(False)
    children = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:
            serve(sock, args.chunks, args.stream_writes)
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
    serve(sock, args.chunks, args.stream_writes)
    forward(signal.SIGTERM, None)
    for pid in children:
        os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()
