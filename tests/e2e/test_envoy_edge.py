"""What Envoy itself answers: limits, probes, normalization, and its local replies in the Anthropic shape."""

from __future__ import annotations

import http.client
import json
import time

import anthropic
import httpx
import pytest

from tests.e2e.conftest import KEY_ALPHA, marker, start_envoy
from tests.e2e.test_streaming import _events
from tests.support.upstream import Reply, openai_stream_text

pytestmark = pytest.mark.e2e

LIMIT = 32 * 1024 * 1024


def _raw(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 request (for input the SDK cannot produce: bad header names, unnormalized paths)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _error_type(status_headers_body: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    status, headers, body = status_headers_body
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body)
    doc = json.loads(body)
    assert doc["type"] == "error" and doc["error"]["message"]
    return status, doc["error"]["type"]


def test_body_over_32mb_declared_length_is_413_without_reaching_anything(stack, up):
    ua = marker()
    big = "x" * (LIMIT + 1024 * 1024)  # 33 MB of prompt
    with pytest.raises(anthropic.APIStatusError) as info:
        stack.envoy.client(KEY_ALPHA, timeout=60).messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": big}],
            extra_headers={"user-agent": ua})
    err = info.value
    assert err.status_code == 413
    assert err.response.json()["error"]["type"] == "request_too_large"
    assert up.requests == []
    entry = stack.envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert entry["route"] == "too_large" and entry["upstream_host"] is None


def test_chunked_body_over_32mb_is_413_from_the_translator(stack, up):
    chunk = b"x" * (1024 * 1024)

    def body():
        yield b'{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"'
        for _ in range(33):
            yield chunk
        yield b'"}]}'

    ua = marker()
    with httpx.Client(timeout=60) as client:
        resp = client.post(stack.envoy.url + "/v1/messages", content=body(),
                           headers={"x-api-key": KEY_ALPHA, "content-type": "application/json", "user-agent": ua})
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "request_too_large"
    assert up.requests == []
    entry = stack.envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert entry["route"] == "messages" and entry["details"] == "via_upstream"


def test_large_body_under_the_limit_streams_through(stack, up):
    prompt = "y" * (5 * 1024 * 1024)
    reply = stack.envoy.client(KEY_ALPHA, timeout=60).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": prompt}])
    assert reply.content[0].text == "Hello!"
    assert len(up.requests) == 1 and up.requests[0].api_key == KEY_ALPHA
    assert prompt in json.dumps(up.requests[0].body)


CASES = [
    # (name, method, path, headers, status, error type): each answered by Envoy or ext_authz, never a 5xx/HTML
    ("metrics-not-public", "GET", "/metrics", {"x-api-key": KEY_ALPHA}, 404, "not_found_error"),
    ("underscore-header", "POST", "/v1/messages", {"x_api_key": KEY_ALPHA}, 400, "invalid_request_error"),
    ("dot-segments-normalized", "POST", "/healthz/../v1/messages", {}, 401, "authentication_error"),
    ("double-slash-normalized", "POST", "//v1//messages", {}, 401, "authentication_error"),
    ("count-tokens-needs-key", "POST", "/v1/messages/count_tokens", {}, 401, "authentication_error"),
    ("models-needs-key", "GET", "/v1/models", {}, 401, "authentication_error"),
    ("unknown-path-needs-key", "POST", "/v1/complete", {}, 401, "authentication_error"),
    ("unknown-path-with-key", "POST", "/v1/complete", {"x-api-key": KEY_ALPHA}, 404, "not_found_error"),
]


@pytest.mark.parametrize("name,method,path,headers,status,error_type", CASES, ids=[c[0] for c in CASES])
def test_edge_replies_in_anthropic_shape(stack, up, name, method, path, headers, status, error_type):
    body = b"{}" if method == "POST" else None
    got = _error_type(_raw(stack.envoy.port, method, path, {"content-type": "application/json", **headers}, body))
    assert got == (status, error_type)
    assert up.requests == []


def test_probes_need_no_key(stack, up):
    assert _raw(stack.envoy.port, "HEAD", "/")[0] == 200  # Claude Code's reachability probe
    assert _raw(stack.envoy.port, "GET", "/readyz")[0] == 200  # the whole path: Envoy, ext_authz, translator
    assert _raw(stack.envoy.port, "GET", "/envoy-healthz")[0] == 200  # Envoy alone
    assert up.requests == []


def test_models_with_key(stack):
    page = stack.envoy.client(KEY_ALPHA).models.list()
    assert page.data and page.data[0].id


def test_admin_is_loopback_only(stack):
    import yaml

    rendered = yaml.safe_load(open(stack.envoy.proc.argv[2]))
    assert rendered["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def _short_idle_timeout(config: dict) -> None:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        if route["name"] == "messages":
            route["route"]["idle_timeout"] = "1s"


def test_idle_timeout_before_the_response_is_504_and_a_silent_stream_is_cut(fallback_authz, recorder, e2e_tmp):
    """The messages route has no total timeout, only an idle one (shortened to 1 s here): silence before the
    response is a 504 in the Anthropic shape; silence in the middle of a stream ends it (no made-up events)."""
    envoy = start_envoy("envoy_short_idle", ext_authz_port=fallback_authz.port, translator_port=recorder.port,
                        tmp=e2e_tmp, patch=_short_idle_timeout)
    try:
        recorder.push(Reply(json_body={"late": True}, delay_s=2.5))
        resp = httpx.post(envoy.url + "/v1/messages", json={}, timeout=10)
        assert resp.status_code == 504
        assert resp.json()["error"] == {"type": "api_error",
                                        "message": "timed out: no data within the stream idle timeout"}

        # 7 frames 0.25 s apart: each gap is under the idle timeout, the whole stream is longer than it.
        recorder.push(openai_stream_text(["a", "b", "c"], frame_delay_s=0.25))
        started = time.monotonic()
        with httpx.stream("POST", envoy.url + "/v1/messages", json={}, timeout=10) as resp:
            assert resp.status_code == 200 and b"[DONE]" in resp.read()
        assert time.monotonic() - started > 1.2

        recorder.push(openai_stream_text(["a", "b"], frame_delay_s=2.5))
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream("POST", envoy.url + "/v1/messages", json={}, timeout=10) as resp:
                assert resp.status_code == 200
                resp.read()
    finally:
        envoy.stop()


def test_http2_cleartext_clients_are_served(stack, up):
    """Envoy's listener speaks HTTP/1.1 and h2c (prior knowledge), e.g. for a gateway in front of it."""
    up.push(openai_stream_text(["over ", "h2c"]))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        resp = client.post(stack.envoy.url + "/v1/messages", json=body, headers={"x-api-key": KEY_ALPHA})
    assert resp.http_version == "HTTP/2" and resp.status_code == 200
    events = _events(resp.content)
    assert "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta") == "over h2c"
    assert events[-1][0] == "message_stop"
    assert up.keys == [KEY_ALPHA]
