"""The keyrelay demo upstream: a loopback OpenAI-compatible server with deterministic replies.

`keyrelay-stack` points the translator at it when no provider is configured, so the whole path (Envoy,
ext_authz, translator) can be tried with Claude Code without any real model or key. It answers:

- `POST /v1/chat/completions` (and `/chat/completions`), streamed or not:
  - a tool call when the request offers tools, the last message (trailing `system` messages aside) is a user
    prompt and that prompt, without Claude Code's <system-reminder> blocks, names an offered tool together
    with the word "tool" (e.g. "use the Bash tool to run `ls`"); a backticked snippet in the prompt becomes
    the tool's first required string argument (e.g. Bash's `command`);
  - after a tool result, a text that quotes the start of the result;
  - otherwise a fixed text saying it is the keyrelay demo upstream;
- `GET /v1/models`, `GET /healthz`, `HEAD` on any path.

Any key (or none) is accepted: this is not an authorization point. Only the key's fingerprint (first 16 hex
characters of its SHA-256, like x-authz-key-id) is ever logged or kept.

The HTTP layer is a minimal asyncio protocol on top of `httptools` (the parser uvicorn uses) rather than a web
framework: no framework overhead per request, so the bench can use it as its "instant" upstream. Replies are
computed synchronously, which keeps pipelined responses in order.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httptools

from keyrelay_common.identity import key_id

DEMO_TEXT = ("Hello from the keyrelay demo upstream. This is a fixed reply, no model is involved: configure "
             "OPENAI_BASE_URL and OPENAI_API_KEY (or another provider) to reach a real model.")
fingerprint = key_id  # the x-authz-key-id construction (keyrelay_common.identity)


def request_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


# ---------------------------------------------------------------- replies (pure)


@dataclass(frozen=True)
class Plan:
    """What to answer: a text, or one tool call."""

    text: str = ""
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)

    @property
    def is_tool_call(self) -> bool:
        return bool(self.tool_name)

    @property
    def call_id(self) -> str:
        digest = hashlib.sha256(json.dumps([self.tool_name, self.tool_args], sort_keys=True).encode()).hexdigest()
        return "call_demo_" + digest[:12]

    def describe(self) -> str:
        return f"tool_call({self.tool_name})" if self.is_tool_call else "text"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if p)
    return ""


_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


def _user_words(content: Any) -> str:
    """The user's own words: the message text without Claude Code's <system-reminder> blocks."""
    return _REMINDER.sub("", _text_of(content)).strip()


def _tool_functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.append(fn)
    return out


_DEFAULTS = {"string": "demo", "integer": 1, "number": 1, "boolean": False, "array": [], "object": {}}


def _arguments(fn: dict[str, Any], snippet: str | None) -> dict[str, Any]:
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    args: dict[str, Any] = {}
    for name in params.get("required") or []:
        kind = (props.get(name) or {}).get("type", "string")
        if isinstance(kind, list):
            kind = kind[0] if kind else "string"
        if kind == "string" and snippet is not None:
            args[name], snippet = snippet, None
        else:
            args[name] = _DEFAULTS.get(kind, "demo")
    return args


def plan_reply(body: dict[str, Any]) -> Plan:
    # Claude Code appends mid-conversation `system` messages after the user's turn: skip them.
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") != "system"]
    last = messages[-1] if messages else {}
    role = last.get("role")
    if role == "tool":
        result = _text_of(last.get("content")).strip().replace("\n", " ")
        name = ""
        for msg in reversed(messages[:-1]):
            for call in (msg.get("tool_calls") or []) if isinstance(msg, dict) else []:
                if call.get("id") == last.get("tool_call_id"):
                    name = (call.get("function") or {}).get("name", "")
        shown = result[:200] + ("..." if len(result) > 200 else "")
        return Plan(text=f"keyrelay demo upstream: the tool {name or 'call'} returned: {shown}")
    if role == "user":
        prompt = _user_words(last.get("content"))
        functions = _tool_functions(body)
        if functions and re.search(r"\btools?\b", prompt, re.IGNORECASE):
            for fn in functions:
                if re.search(r"(?<![\w-])" + re.escape(fn["name"]) + r"(?![\w-])", prompt, re.IGNORECASE):
                    match = re.search(r"`([^`]+)`", prompt)
                    return Plan(tool_name=fn["name"], tool_args=_arguments(fn, match.group(1) if match else None))
        said = prompt.strip().replace("\n", " ")
        if said:
            return Plan(text=f"{DEMO_TEXT} You said: {said[:120]}")
    return Plan(text=DEMO_TEXT)


def _usage(body_len: int, plan: Plan) -> dict[str, int]:
    prompt = max(1, body_len // 4)
    completion = max(1, len(plan.text or json.dumps(plan.tool_args)) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(plan: Plan, model: str, body_len: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.text or None}
    if plan.is_tool_call:
        message["tool_calls"] = [{"id": plan.call_id, "type": "function",
                                  "function": {"name": plan.tool_name, "arguments": json.dumps(plan.tool_args)}}]
    return {
        "id": "chatcmpl-keyrelay-demo", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if plan.is_tool_call else "stop"}],
        "usage": _usage(body_len, plan),
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-keyrelay-demo", "object": "chat.completion.chunk", "created": 1700000000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _pieces(text: str, n: int = 4) -> list[str]:
    words = text.split(" ")
    step = max(1, -(-len(words) // n))
    return [" ".join(words[i:i + step]) + (" " if i + step < len(words) else "") for i in range(0, len(words), step)]


def stream_chunks(plan: Plan, model: str, body_len: int, include_usage: bool) -> list[dict[str, Any]]:
    chunks = [_chunk(model, {"role": "assistant", "content": ""})]
    if plan.is_tool_call:
        args = json.dumps(plan.tool_args)
        half = len(args) // 2
        chunks.append(_chunk(model, {"tool_calls": [{"index": 0, "id": plan.call_id, "type": "function",
                                                     "function": {"name": plan.tool_name, "arguments": ""}}]}))
        for piece in (args[:half], args[half:]):
            if piece:
                chunks.append(_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        chunks.append(_chunk(model, {}, "tool_calls"))
    else:
        chunks += [_chunk(model, {"content": p}) for p in _pieces(plan.text)]
        chunks.append(_chunk(model, {}, "stop"))
    if include_usage:
        chunks.append({"id": "chatcmpl-keyrelay-demo", "object": "chat.completion.chunk", "created": 1700000000,
                       "model": model, "choices": [], "usage": _usage(body_len, plan)})
    return chunks


def models_body() -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 1700000000, "owned_by": "keyrelay-demo"}
        for name in ("keyrelay-demo-big", "keyrelay-demo-small")]}


# ---------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    chunks: list[bytes] | None = None  # sent with chunked transfer encoding (SSE)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _json(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode())


def _openai_error(status: int, message: str) -> Response:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}})


class DemoApp:
    """Routes one parsed request to a Response. `log` receives one line per request (fingerprints only)."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.log = log
        self.requests = 0
        self.key_ids: list[str] = []  # fingerprints of recent keys (bounded), for inspection in tests

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        self.requests += 1
        path = path.split("?", 1)[0]
        key = request_key(headers)
        key_id = fingerprint(key) if key else "none"
        if key:
            self.key_ids.append(key_id)
            del self.key_ids[:-1000]
        if method == "HEAD":
            return Response(200)
        if path in ("/v1/models", "/models") and method == "GET":
            return _json(200, models_body())
        if path in ("/healthz", "/readyz") and method == "GET":
            return _json(200, {"status": "ok"})
        if path not in ("/v1/chat/completions", "/chat/completions"):
            return _openai_error(404, f"the keyrelay demo upstream does not serve {method} {path}")
        if method != "POST":
            return _openai_error(405, "use POST")
        try:
            req = json.loads(body or b"null")
        except ValueError:
            return _openai_error(400, "the request body is not JSON")
        if not isinstance(req, dict):
            return _openai_error(400, "the request body must be a JSON object")
        model = str(req.get("model") or "keyrelay-demo")
        plan = plan_reply(req)
        stream = bool(req.get("stream"))
        if self.log:
            self.log(f"POST {path} model={model} stream={str(stream).lower()} key_id={key_id} "
                     f"reply={plan.describe()}")
        if not stream:
            return _json(200, completion_body(plan, model, len(body)))
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        frames = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n"
                  for c in stream_chunks(plan, model, len(body), include_usage)]
        frames.append(b"data: [DONE]\n\n")
        return Response(200, content_type="text/event-stream", chunks=frames)


def encode_response(resp: Response, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'OK')}",
            f"content-type: {resp.content_type}", "server: keyrelay-demo-upstream"]
    if not keep_alive:
        head.append("connection: close")
    if resp.chunks is not None:
        head += ["transfer-encoding: chunked", "cache-control: no-cache"]
        out = ["\r\n".join(head).encode(), b"\r\n\r\n"]
        for c in resp.chunks:
            out += [b"%x\r\n" % len(c), c, b"\r\n"]
        out.append(b"0\r\n\r\n")
        return b"".join(out)
    head.append(f"content-length: {len(resp.body)}")
    return "\r\n".join(head).encode() + b"\r\n\r\n" + resp.body


class _Connection(asyncio.Protocol):
    def __init__(self, app: DemoApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(encode_response(_openai_error(400, "malformed HTTP request"), False))
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method().decode()
        try:
            resp = self.app.handle(method, self._url.decode("latin-1"), self._headers, b"".join(self._body))
        except Exception as exc:  # never a traceback to the client; the class name is enough to debug
            resp = _json(500, {"error": {"message": f"demo upstream error: {type(exc).__name__}",
                                         "type": "server_error", "code": None}})
        data = encode_response(resp, keep_alive)
        if method == "HEAD":
            data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        self.transport.write(data)
        if not keep_alive:
            self._close()


async def start_server(host: str = "127.0.0.1", port: int = 0,
                       log: Callable[[str], None] | None = None) -> tuple[asyncio.Server, DemoApp]:
    app = DemoApp(log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(app), host, port, reuse_address=True, backlog=1024)
    return server, app


class DemoUpstreamThread:
    """The demo upstream on its own event loop in a daemon thread (for tests and the bench):
    `with DemoUpstreamThread() as demo: demo.url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log: Callable[[str], None] | None = None) -> None:
        self._host, self._port, self._log = host, port, log
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyrelay-demo-upstream", daemon=True)
        self.url = ""
        self.app: DemoApp | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server, self.app = self._loop.run_until_complete(start_server(self._host, self._port, self._log))
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://{self._host}:{self.port}"
        self._server = server
        self._started.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def start(self) -> "DemoUpstreamThread":
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("demo upstream did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "DemoUpstreamThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m keyrelay_stack.demo_upstream",
                                description="Loopback OpenAI-compatible server with deterministic replies.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed in the ready line)")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = p.parse_args(argv)

    def log(line: str) -> None:
        print(time.strftime("%H:%M:%S ") + line, flush=True)

    async def run() -> None:
        server, _ = await start_server(args.host, args.port, None if args.quiet else log)
        port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"ready: demo upstream on http://{args.host}:{port}", flush=True)
        await stop.wait()
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"error: demo upstream cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
