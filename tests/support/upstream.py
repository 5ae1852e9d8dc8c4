"""A scripted loopback upstream: a real HTTP server that speaks the OpenAI chat-completions and the
Anthropic Messages wire formats, answers from a per-test script and records every request it received
(path, headers, JSON body, and the credential it carried).

Used by the translator, end-to-end and Claude Code tests. Standard-library HTTP server on purpose: it runs
in a thread beside pytest's event loops, needs no extra dependency, and speaks plain HTTP/1.1 with real
chunked transfer encoding for streams.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable


@dataclass
class Reply:
    """One scripted answer. Exactly one of `json_body`, `sse` or `raw` is used."""

    status: int = 200
    json_body: Any = None
    # SSE frames, already formatted without the trailing blank line, e.g. 'data: {...}' or
    # 'event: message_start\ndata: {...}'. Each frame is sent as its own chunk.
    sse: list[str] | None = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the first byte
    frame_delay_s: float = 0.0  # between SSE frames
    drop_after_frames: int | None = None  # close the connection mid-stream after N frames


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or raw text when not JSON
    raw: bytes = b""  # the body's bytes as they arrived

    @property
    def api_key(self) -> str | None:
        """The credential the request carried: `Authorization: Bearer` first, then `x-api-key`."""
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return self.headers.get("x-api-key") or self.headers.get("x-goog-api-key")


# ---------------------------------------------------------------- reply builders (OpenAI wire format)


def openai_completion(
    text: str | None = "Hello!",
    *,
    model: str = "gpt-test",
    finish_reason: str = "stop",
    tool_calls: list[dict] | None = None,
    reasoning: str | None = None,
    usage: dict | None = None,
) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return Reply(
        json_body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
    )


def openai_tool_call(call_id: str, name: str, arguments: dict | str) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def openai_chunk(delta: dict, *, finish_reason: str | None = None, model: str = "gpt-test") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def openai_usage_chunk(prompt_tokens: int = 11, completion_tokens: int = 7, **extra: Any) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens, **extra}
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-test", "choices": [], "usage": usage}


def openai_stream(chunks: Iterable[dict], *, done: bool = True, **kw: Any) -> Reply:
    frames = [f"data: {json.dumps(c)}" for c in chunks]
    if done:
        frames.append("data: [DONE]")
    return Reply(sse=frames, headers={"content-type": "text/event-stream"}, **kw)


def openai_stream_text(pieces: list[str], *, finish_reason: str = "stop", usage: bool = True, **kw: Any) -> Reply:
    chunks = [openai_chunk({"role": "assistant", "content": ""})]
    chunks += [openai_chunk({"content": p}) for p in pieces]
    chunks.append(openai_chunk({}, finish_reason=finish_reason))
    if usage:
        chunks.append(openai_usage_chunk())
    return openai_stream(chunks, **kw)


def openai_stream_tool_call(call_id: str, name: str, arguments: dict, *, text: str | None = None,
                            split: int = 3, **kw: Any) -> Reply:
    """A streamed reply with optional text followed by one tool call whose arguments arrive in pieces."""
    chunks = [openai_chunk({"role": "assistant", "content": ""})]
    if text:
        chunks.append(openai_chunk({"content": text}))
    args = json.dumps(arguments)
    step = max(1, len(args) // split)
    parts = [args[i:i + step] for i in range(0, len(args), step)]
    chunks.append(openai_chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                                "function": {"name": name, "arguments": ""}}]}))
    chunks += [openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in parts]
    chunks.append(openai_chunk({}, finish_reason="tool_calls"))
    chunks.append(openai_usage_chunk())
    return openai_stream(chunks, **kw)


def openai_error(status: int, message: str = "upstream error", err_type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, json_body={"error": {"message": message, "type": err_type, "code": None}},
                 headers=headers or {})


# ---------------------------------------------------------------- reply builders (Anthropic wire format)


def anthropic_message(text: str = "Hello!", *, model: str = "claude-test", stop_reason: str = "end_turn") -> Reply:
    return Reply(json_body={
        "id": "msg_upstream", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    })


def anthropic_stream(events: list[tuple[str, dict]], **kw: Any) -> Reply:
    frames = [f"event: {name}\ndata: {json.dumps(data)}" for name, data in events]
    return Reply(sse=frames, headers={"content-type": "text/event-stream"}, **kw)


def anthropic_stream_text(text: str = "Hello!", *, model: str = "claude-test") -> Reply:
    return anthropic_stream([
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_upstream", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": text}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 5}}),
        ("message_stop", {"type": "message_stop"}),
    ])


# ---------------------------------------------------------------- reply builders (Gemini generateContent wire format)
# For LiteLLM's `gemini/` provider pointed at this server (api_base): it POSTs
# /models/<model>:generateContent, or :streamGenerateContent?alt=sse, with the key in `x-goog-api-key`.


def gemini_parts(text: str | None = None, function_call: tuple[str, dict] | None = None) -> list[dict]:
    parts: list[dict] = []
    if text:
        parts.append({"text": text})
    if function_call:
        parts.append({"functionCall": {"name": function_call[0], "args": function_call[1]}})
    return parts


def gemini_response(text: str | None = "Hello!", *, function_call: tuple[str, dict] | None = None,
                    finish_reason: str = "STOP", prompt_tokens: int = 9, output_tokens: int = 4) -> Reply:
    return Reply(json_body={
        "candidates": [{"content": {"role": "model", "parts": gemini_parts(text, function_call)},
                        "finishReason": finish_reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
                          "totalTokenCount": prompt_tokens + output_tokens},
        "modelVersion": "gemini-test",
    })


def gemini_stream(pieces: list[str], *, function_call: tuple[str, dict] | None = None,
                  prompt_tokens: int = 9, output_tokens: int = 4, **kw: Any) -> Reply:
    """Streamed generateContent (`alt=sse`): one frame per text piece, then the function call (if any) and
    the finish reason with usage."""
    frames = []
    for p in pieces:
        frames.append({"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}],
                       "modelVersion": "gemini-test"})
    last: dict[str, Any] = {"content": {"role": "model", "parts": gemini_parts(None, function_call) or [{"text": ""}]},
                            "finishReason": "STOP", "index": 0}
    frames.append({"candidates": [last], "modelVersion": "gemini-test",
                   "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
                                     "totalTokenCount": prompt_tokens + output_tokens}})
    return Reply(sse=[f"data: {json.dumps(f)}" for f in frames], headers={"content-type": "text/event-stream"},
                 **kw)


# ---------------------------------------------------------------- the server


class ScriptedUpstream:
    """Start with `with ScriptedUpstream() as up:`; `up.url` is the base URL (no trailing slash).

    Replies are taken in order from `push(...)`; when the script is empty, `default` answers
    (a function of the recorded request, so a test can script by path or body)."""

    def __init__(self, default: Reply | Callable[[Recorded], Reply] | None = None) -> None:
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.aborted: list[Recorded] = []  # requests whose reply the client cut off (connection closed)
        self.default = default
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate small writes; without TCP_NODELAY each request waits
            # for the peer's delayed ACK (~40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body, raw)
                reply = upstream._next(rec)
                try:
                    upstream._send(self, reply)
                except (BrokenPipeError, ConnectionResetError):
                    # The client went away mid-reply (e.g. a translator cancelling the upstream call).
                    with upstream._lock:
                        upstream.aborted.append(rec)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-upstream", daemon=True)

    # -- script
    def wait_aborted(self, timeout_s: float = 3.0) -> bool:
        """Whether a client cut a reply off (closed its connection) within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(self.aborted)

    def push(self, *replies: Reply) -> "ScriptedUpstream":
        with self._lock:
            self._script.extend(replies)
        return self

    def reset(self) -> "ScriptedUpstream":
        """Forget the script and everything recorded (for a server shared by several tests)."""
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.aborted.clear()
        return self

    def _next(self, rec: Recorded) -> Reply:
        with self._lock:
            self.requests.append(rec)
            if self._script:
                return self._script.pop(0)
        if callable(self.default):
            return self.default(rec)
        if self.default is not None:
            return self.default
        if rec.path.rstrip("/").endswith("/messages"):
            return anthropic_message()
        return openai_completion()

    @property
    def keys(self) -> list[str | None]:
        return [r.api_key for r in self.requests]

    # -- wire
    @staticmethod
    def _send(h: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.delay_s:
            time.sleep(reply.delay_s)
        h.send_response(reply.status)
        headers = {k.lower(): v for k, v in reply.headers.items()}
        if reply.sse is not None:
            headers.setdefault("content-type", "text/event-stream")
            headers["transfer-encoding"] = "chunked"
            headers.setdefault("cache-control", "no-cache")
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            for i, frame in enumerate(reply.sse):
                if reply.drop_after_frames is not None and i >= reply.drop_after_frames:
                    h.wfile.flush()
                    h.close_connection = True
                    # Abort without the terminating chunk: the client sees a broken stream.
                    h.connection.shutdown(2)
                    return
                data = (frame + "\n\n").encode()
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                h.wfile.flush()
                if reply.frame_delay_s:
                    time.sleep(reply.frame_delay_s)
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
            return
        if reply.raw is not None:
            payload = reply.raw
        else:
            payload = json.dumps(reply.json_body).encode()
            headers.setdefault("content-type", "application/json")
        headers["content-length"] = str(len(payload))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()

    # -- lifecycle
    def start(self) -> "ScriptedUpstream":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "ScriptedUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
