"""The translator against a hostile upstream and hostile requests: a scripted loopback TCP server that answers
with whatever bytes a test tells it to (endless heads, huge bodies, gzip bombs, giant SSE events, odd chunks,
drips, keys in headers, broken framing, redirects, no TLS), in front of the translator run as a real process.

Every row asserts the client's status and error shape, that the next request on the same translator is served
cleanly, and (at the end) that the process's peak RSS (VmHWM from /proc) stayed under `RSS_LIMIT_MB`, the limit
docs/translator.md documents for a worker under hostile upstreams.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import threading
import time
import zlib
from typing import Callable

import httpx
import orjson
import pytest

from tests.support.procs import Proc, base_env, free_port, script
from tests.support.upstream import openai_chunk

RSS_LIMIT_MB = 256
KEY = "sk-user-hostile-test-key-0001"
MiB = 1024 * 1024
USER = [{"role": "user", "content": "hello"}]

COMPLETION = orjson.dumps({"id": "c1", "object": "chat.completion", "model": "gpt-test", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def http_head(status: str = "200 OK", *headers: str) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def json_answer(body: bytes = COMPLETION, status: str = "200 OK", *headers: str) -> bytes:
    return http_head(status, "content-type: application/json", f"content-length: {len(body)}", *headers) + body


def sse_head() -> bytes:
    return http_head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def openai_sse(*chunks: dict) -> bytes:
    return b"".join(chunk(b"data: " + orjson.dumps(c) + b"\n\n") for c in chunks)


def flood(sock: socket.socket, piece: bytes, total: int) -> None:
    """Send `piece` repeatedly, up to `total` bytes or until the translator hangs up."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass


class Hostile(socketserver.ThreadingTCPServer):
    """Reads each request (head and content-length body), records it, and hands the socket to `behaviour`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        self.behaviour: Callable[[socket.socket], None] = lambda s: s.sendall(json_answer())
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Hostile = self.server  # type: ignore[assignment]
        server.connections += 1
        sock = self.request
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                if buf[:1] == b"\x16":  # a TLS ClientHello: this server speaks no TLS
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    return
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            server.requests.append((head, body))
            try:
                server.behaviour(sock)
            except OSError:
                return


@pytest.fixture(scope="module")
def hostile():
    server = Hostile()
    yield server
    server.shutdown()
    server.server_close()


def start_translator(hostile: Hostile, tmp_path, **env: str) -> tuple[Proc, str]:
    port = free_port()
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"rules:\n  - match: tls-model\n    target: openai/gpt-test\n"
                      f"    base_url: https://127.0.0.1:{hostile.port}/v1\n")
    proc = Proc([script("keyrelay-translator"), "--port", str(port), "--routes", str(routes)],
                base_env(OPENAI_BASE_URL=f"http://127.0.0.1:{hostile.port}/v1",
                         ANTHROPIC_BASE_URL=f"http://127.0.0.1:{hostile.port}",
                         TRANSLATOR_PING_INTERVAL="0.5", TRANSLATOR_READ_TIMEOUT="20",
                         LITELLM_LOCAL_MODEL_COST_MAP="True", **env)).wait_ready()
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def translator(hostile, tmp_path_factory):
    proc, url = start_translator(hostile, tmp_path_factory.mktemp("hostile"))
    yield proc, url
    proc.stop()


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                out[name] = int(value.split()[0]) // 1024  # MB
    return out


def post(url: str, model: str = "claude-sonnet-4-5", stream: bool = False, timeout: float = 60,
         **extra) -> httpx.Response:
    body = {"model": model, "max_tokens": 5, "messages": USER, "stream": stream, **extra}
    return httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=timeout)


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for frame in text.split("\n\n"):
        if frame.strip():
            name = frame.split("\n", 1)[0].removeprefix("event: ")
            data = json.loads(frame.split("data: ", 1)[1])
            out.append((name, data))
    return out


def assert_next_request_is_clean(hostile: Hostile, url: str) -> None:
    hostile.behaviour = lambda s: s.sendall(json_answer())
    r = post(url)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "fine"


# ------------------------------------------------------------------ the table: non-streaming answers

def endless_header_lines(s):
    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    flood(s, b"x-filler: " + b"a" * 50 + b"\r\n", 8 * 1024 * MiB)


def one_endless_header(s):
    s.sendall(b"HTTP/1.1 200 OK\r\nx-endless: ")
    flood(s, b"a" * 65536, 8 * 1024 * MiB)


def many_short_headers(s):
    s.sendall(b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(150)) + b"\r\n")


def gigabyte_json(s):
    s.sendall(http_head("200 OK", "content-type: application/json", f"content-length: {1024 * MiB}"))
    flood(s, b'{"a":' * 13107, 1024 * MiB)


_BOMB: list[bytes] = []


def gzip_bomb_bytes() -> bytes:
    """~250 KB of gzip that expands to 256 MiB of zeros."""
    if not _BOMB:
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        zeros = bytes(MiB)
        _BOMB.append(b"".join([c.compress(zeros) for _ in range(256)] + [c.flush()]))
    return _BOMB[0]


def gzip_bomb(s):
    bomb = gzip_bomb_bytes()
    s.sendall(http_head("200 OK", "content-type: application/json", "content-encoding: gzip",
                        f"content-length: {len(bomb)}") + bomb)


def bad_chunk_size(s):
    s.sendall(http_head("200 OK", "content-type: application/json", "transfer-encoding: chunked") + b"zz\r\n{}")
    s.close()


def short_content_length(s):
    s.sendall(http_head("200 OK", "content-type: application/json", "content-length: 1000") + COMPLETION[:40])
    s.shutdown(socket.SHUT_WR)


def second_response_after_the_body(s):
    s.sendall(json_answer() + json_answer(b'{"second": true}'))


def redirect(s):
    s.sendall(http_head("307 Temporary Redirect", "location: http://127.0.0.1:1/v1/chat/completions",
                        "content-length: 0"))


def key_in_retry_after_and_body(s):
    body = orjson.dumps({"error": {"message": f"key {KEY.upper()} / {KEY.replace('-', '%2D')} over quota"}})
    s.sendall(json_answer(body, "429 Too Many Requests", f"retry-after: {KEY}"))


NON_STREAMING = [
    # id, behaviour, model, expected status, expected error type, fragment of the message
    ("endless header lines", endless_header_lines, "claude-sonnet-4-5", 502, "api_error", "100 header lines"),
    ("one endless header line", one_endless_header, "claude-sonnet-4-5", 502, "api_error", "65536 bytes"),
    ("150 short headers", many_short_headers, "claude-sonnet-4-5", 502, "api_error", "header lines"),
    ("1 GB JSON body", gigabyte_json, "claude-sonnet-4-5", 502, "api_error", "response body exceeds"),
    ("gzip bomb", gzip_bomb, "claude-sonnet-4-5", 502, "api_error", "response body exceeds"),
    ("gzip bomb, Anthropic path", gzip_bomb, "anthropic/claude-x", 502, "api_error", "response body exceeds"),
    ("endless headers, Anthropic path", endless_header_lines, "anthropic/claude-x", 502, "api_error", "header"),
    ("bad chunk size", bad_chunk_size, "claude-sonnet-4-5", 502, "api_error", "upstream openai"),
    ("short content-length", short_content_length, "claude-sonnet-4-5", 502, "api_error", "closed the connection"),
    ("redirect", redirect, "claude-sonnet-4-5", 502, "api_error", "HTTP 307"),
    ("key in retry-after and body", key_in_retry_after_and_body, "claude-sonnet-4-5", 429, "rate_limit_error",
     "over quota"),
]


@pytest.mark.parametrize("name,behaviour,model,status,err_type,fragment", NON_STREAMING,
                         ids=[row[0] for row in NON_STREAMING])
def test_hostile_non_streaming_answers(hostile, translator, name, behaviour, model, status, err_type, fragment):
    proc, url = translator
    hostile.behaviour = behaviour
    t0 = time.monotonic()
    r = post(url, model)
    assert time.monotonic() - t0 < 30
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == err_type
    assert fragment in body["error"]["message"]
    assert KEY.lower() not in r.text.lower() and "%2d" not in r.text.lower()
    assert "retry-after" not in r.headers  # a key there is never passed on
    assert_next_request_is_clean(hostile, url)


def test_a_second_response_after_the_body_is_not_taken_for_the_next_answer(hostile, translator):
    proc, url = translator
    hostile.behaviour = second_response_after_the_body
    r = post(url)
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "fine"
    before = hostile.connections
    assert_next_request_is_clean(hostile, url)  # the poisoned connection was not reused
    assert hostile.connections == before + 1


def test_tls_failure_is_a_502(hostile, translator):
    proc, url = translator
    r = post(url, "tls-model")
    assert r.status_code == 502
    assert r.json()["error"]["message"] == "upstream openai is unreachable (connection failed)"
    assert_next_request_is_clean(hostile, url)


# ------------------------------------------------------------------ the table: streams

def huge_sse_event_openai(s):
    s.sendall(sse_head() + openai_sse(openai_chunk({"content": "a"})))
    s.sendall(b"%x\r\n" % (100 * MiB) + b"data: ")
    flood(s, b"b" * 65536, 100 * MiB)


def huge_sse_event_anthropic(s):
    start = {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                                  "model": "claude-x", "usage": {"input_tokens": 1, "output_tokens": 0}}}
    s.sendall(sse_head() + chunk(b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n"))
    s.sendall(b"%x\r\n" % (100 * MiB) + b"event: content_block_delta\ndata: ")
    flood(s, b"c" * 65536, 100 * MiB)


def odd_chunk(payload: bytes):
    def behaviour(s):
        s.sendall(sse_head() + openai_sse(openai_chunk({"content": "a"})) + chunk(b"data: " + payload + b"\n\n")
                  + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return behaviour


def paced_odd_chunk(payload: bytes):
    """`odd_chunk` with each event in a read of its own (the one-event read the stream parses from the bytes)."""
    def behaviour(s):
        s.sendall(sse_head() + openai_sse(openai_chunk({"content": "a"})))
        time.sleep(0.05)
        s.sendall(chunk(b"data: " + payload + b"\n\n"))
        time.sleep(0.05)
        s.sendall(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return behaviour


STREAMING = [
    ("one-event read: not an object", paced_odd_chunk(b"[1,2]"), "claude-sonnet-4-5", "api_error",
     "malformed stream chunk"),
    ("one-event read: not JSON", paced_odd_chunk(b"{\xff\xfe"), "claude-sonnet-4-5", "api_error",
     "malformed stream chunk"),
    ("one-event read: an error chunk", paced_odd_chunk(b'{"error":{"message":"slow down","code":429}}'),
     "claude-sonnet-4-5", "rate_limit_error", "slow down"),
    ("one-event read: choices not a list", paced_odd_chunk(b'{"choices":7}'), "claude-sonnet-4-5", "api_error",
     "stream failed"),
    ("100 MB SSE event, OpenAI path", huge_sse_event_openai, "claude-sonnet-4-5", "api_error", "stream event over"),
    ("100 MB SSE event, Anthropic path", huge_sse_event_anthropic, "anthropic/claude-x", "api_error",
     "stream event over"),
    ("choices [null]", odd_chunk(b'{"choices":[null]}'), "claude-sonnet-4-5", "api_error", "stream failed"),
    ("content 5", odd_chunk(b'{"choices":[{"index":0,"delta":{"content":5}}]}'), "claude-sonnet-4-5", "api_error",
     "stream failed"),
    ("choices not a list", odd_chunk(b'{"choices":7}'), "claude-sonnet-4-5", "api_error", "stream failed"),
]


@pytest.mark.parametrize("name,behaviour,model,err_type,fragment", STREAMING, ids=[row[0] for row in STREAMING])
def test_hostile_streams_end_with_an_error_event(hostile, translator, name, behaviour, model, err_type, fragment):
    proc, url = translator
    hostile.behaviour = behaviour
    t0 = time.monotonic()
    r = post(url, model, stream=True)
    assert time.monotonic() - t0 < 30
    assert r.status_code == 200
    got = events(r.text)
    assert got[0][0] == "message_start"
    assert got[-1][0] == "error", got[-3:]
    assert got[-1][1]["error"]["type"] == err_type and fragment in got[-1][1]["error"]["message"]
    assert "Traceback" not in proc.output
    assert_next_request_is_clean(hostile, url)


def test_an_upstream_dripping_bytes_still_gets_pings(hostile, translator):
    # One byte every 0.1 s, never completing an event: pings (interval 0.5 s) are timed from the last event
    # sent to the client, not from upstream bytes.
    proc, url = translator

    def drip(s):
        s.sendall(sse_head() + openai_sse(openai_chunk({"content": "a"})))
        s.sendall(b"%x\r\n" % 1000)
        for _ in range(30):
            s.sendall(b"d")
            time.sleep(0.1)
        s.close()

    hostile.behaviour = drip
    r = post(url, stream=True)
    names = [n for n, _ in events(r.text)]
    assert names.count("ping") >= 3, names
    assert names[-1] == "error"
    assert_next_request_is_clean(hostile, url)


# ------------------------------------------------------------------ hostile requests

def test_a_provider_prefix_that_is_not_enabled_is_a_400_without_any_connection(hostile, translator):
    proc, url = translator
    before = hostile.connections, len(hostile.requests)
    for model in ("groq/llama-3.3-70b", "bedrock/anthropic.claude-3", "vertex_ai/gemini-2.5-pro"):
        r = post(url, model)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert repr(model) in r.json()["error"]["message"]
    assert (hostile.connections, len(hostile.requests)) == before
    metrics = httpx.get(f"{url}/metrics").text
    assert "keyrelay_translator_litellm_import_seconds 0.0" in metrics  # LiteLLM was never imported


def test_control_characters_from_a_client_never_forge_a_log_line(hostile, translator):
    proc, url = translator
    forged = "x\n2026-01-01 00:00:00,000 INFO keyrelay.translator FORGED status=200"
    post(url, f"groq/{forged}")
    post(url, forged)  # a model name passed on as-is
    time.sleep(0.6)  # the log handler flushes every 0.25 s
    logged = [line for line in proc.lines if line.startswith("{")]
    assert not any(line.startswith("2026-01-01") for line in proc.lines)
    assert all(isinstance(json.loads(line), dict) for line in logged)  # every line one JSON object
    forged_lines = [json.loads(line) for line in logged if "FORGED" in line]
    assert forged_lines and all("\n" not in str(v) for rec in forged_lines for v in rec.values())


@pytest.mark.parametrize("raw_path", [b"/v1%2Fmessages", b"/v1/./messages", b"//v1/messages",
                                      b"/v1/messages/../messages", b"/v1/%6Dessages"])
def test_a_path_that_is_not_canonical_is_a_404(hostile, translator, raw_path):
    proc, url = translator
    body = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER})
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST " + raw_path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-api-key: "
                  + KEY.encode() + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        answer = b""
        while chunk_ := s.recv(65536):
            answer += chunk_
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), head
    assert json.loads(payload)["error"]["type"] == "not_found_error"


def test_a_request_over_the_structural_caps_is_refused(hostile, translator):
    proc, url = translator
    blocks = [{"type": "text", "text": "x"}] * 100_001
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        r = httpx.post(f"{url}{path}", headers={"x-api-key": KEY}, timeout=60, json={
            "model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": blocks}]})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
        assert "content blocks" in r.json()["error"]["message"]
    images = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}] * 601
    r = post(url, messages=[{"role": "user", "content": images}])
    assert r.status_code == 413 and "601" not in r.text and "600 images" in r.json()["error"]["message"]


def test_peak_rss_stays_under_the_documented_limit(translator):
    """Runs after the rows above (same translator process): nothing they sent pushed the peak over the limit."""
    proc, url = translator
    status = proc_status(proc.popen.pid)
    print(f"translator after the hostile rows: VmHWM {status['VmHWM']} MB, VmRSS {status['VmRSS']} MB")
    assert status["VmHWM"] < RSS_LIMIT_MB


# ------------------------------------------------------------------ shutdown


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_ends_streams_in_flight_with_an_overloaded_error_after_the_grace(hostile, tmp_path, workers):
    proc, url = start_translator(hostile, tmp_path, TRANSLATOR_SHUTDOWN_GRACE="1", TRANSLATOR_WORKERS=workers)

    def slow(s):
        s.sendall(sse_head())
        for i in range(100):
            s.sendall(openai_sse(openai_chunk({"content": f"w{i} "})))
            time.sleep(0.1)

    hostile.behaviour = slow
    try:
        with httpx.stream("POST", f"{url}/v1/messages", headers={"x-api-key": KEY}, timeout=30,
                          json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER,
                                "stream": True}) as r:
            it = r.iter_text()
            text = next(it)
            t0 = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            for piece in it:
                text += piece
        waited = time.monotonic() - t0
        got = events(text)
        assert got[-1] == ("error", {"type": "error", "error": {
            "type": "overloaded_error", "message": "the translator is shutting down; retry the request"}})
        assert 0.8 < waited < 6
        assert proc.popen.wait(15) == 0
    finally:
        proc.stop()


def test_shutdown_grace_fits_the_pods_termination_grace_period():
    """The default grace plus the preStop sleep and uvicorn's margin fit into the pod's
    terminationGracePeriodSeconds (k8s/base/translator/deployment.yaml)."""
    import yaml

    from translator.settings import Settings

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "k8s", "base", "translator",
                           "deployment.yaml")) as fh:
        spec = yaml.safe_load(fh)["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "translator")
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pre_stop + Settings.shutdown_grace_s + 5 + 5 <= spec["terminationGracePeriodSeconds"]

