"""The `keyrelay-translator` console script as a real process: ready line, serving, clean SIGTERM/SIGINT,
one-line configuration errors, keys never in its output."""

from __future__ import annotations

import json
import signal
import subprocess

import anthropic
import httpx
import pytest

from tests.support.procs import Proc, base_env, free_port, script
from translator.credentials import fingerprint
from tests.support.upstream import openai_completion, openai_stream_text

KEY = "sk-user-cli-secret-0001"
STATIC = "sk-static-cli-secret-0002"


@pytest.mark.parametrize("workers,sig", [(1, signal.SIGTERM), (2, signal.SIGINT)])
def test_console_script_serves_and_stops_cleanly(upstream, workers, sig):
    port = free_port()
    proc = Proc([script("keyrelay-translator"), "--port", str(port), "--workers", str(workers)],
                env=base_env(OPENAI_BASE_URL=upstream.url + "/v1", OPENAI_API_KEY=STATIC,
                             TRANSLATOR_LOG_LEVEL="debug"))
    try:
        proc.wait_ready(60)
        assert f"ready: translator on http://127.0.0.1:{port}" in proc.lines
        upstream.push(openai_completion("cli ok"), openai_stream_text(["a", "b"]))
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=KEY, max_retries=0)
        assert client.messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                      messages=[{"role": "user", "content": "x"}]).content[0].text == "cli ok"
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=5,
                                    messages=[{"role": "user", "content": "x"}]) as s:
            assert s.get_final_message().content[0].text == "ab"
        assert httpx.head(f"http://127.0.0.1:{port}/").status_code == 200
        assert upstream.keys == [KEY, KEY]
        # Whichever worker answers the scrape, it counts both requests (workers aggregate their metrics).
        for _ in range(3):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert 'keyrelay_translator_requests_total{provider="openai",route="messages",status="200"} 2.0' in text
    finally:
        rc = proc.stop(sig)
    assert rc == 0, proc.output[-2000:]
    assert KEY not in proc.output and STATIC not in proc.output
    # The request log lines (also from spawned workers) are JSON and name the key by fingerprint only.
    requests = [json.loads(line) for line in proc.lines if line.startswith("{") and '"msg":"request"' in line]
    assert [r["status"] for r in requests if r["route"] == "messages"] == [200, 200], proc.output[-2000:]
    assert all(r["key_id"] == fingerprint(KEY) and r["stream"] in (True, False) for r in requests
               if r["route"] == "messages")
    assert {r["pid"] for r in requests} and all(r["level"] == "info" for r in requests)


@pytest.mark.parametrize("args,env,fragment", [
    (["--port", "notaport"], {}, "--port"),
    ([], {"PREFERRED_PROVIDER": "nope"}, "PREFERRED_PROVIDER"),
    (["--routes", "/nonexistent.yaml"], {}, "routing file"),
])
def test_bad_configuration_exits_non_zero_with_one_line(args, env, fragment):
    r = subprocess.run([script("keyrelay-translator"), *args], env=base_env(**env), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert fragment in lines[0]


def test_port_in_use_is_one_line(upstream):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([script("keyrelay-translator"), "--port", str(port)], env=base_env(),
                           capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot listen" in lines[0]


def test_litellm_path_keeps_keys_out_of_output_even_at_debug(upstream):
    """LiteLLM has its own loggers; at our debug level neither they nor our lines may show a key, also when
    the upstream echoes the key in an error."""
    from tests.support.upstream import Reply, gemini_response

    port = free_port()
    proc = Proc([script("keyrelay-translator"), "--port", str(port), "--log-level", "debug"],
                env=base_env(PREFERRED_PROVIDER="google", GEMINI_BASE_URL=upstream.url, GEMINI_API_KEY=STATIC))
    try:
        proc.wait_ready(90)  # LiteLLM is preloaded because the default routes need it
        upstream.push(gemini_response("fine"),
                      Reply(status=401, json_body={"error": {"code": 401, "message": f"API key {KEY} not valid"}}),
                      Reply(status=401, json_body={"error": {"code": 401, "message": f"API key {STATIC} bad"}}))
        url = f"http://127.0.0.1:{port}/v1/messages"
        body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        assert httpx.post(url, json=body, headers={"x-api-key": KEY}, timeout=30).status_code == 200
        r = httpx.post(url, json=body, headers={"x-api-key": KEY}, timeout=30)
        assert r.status_code == 401 and KEY not in r.text
        r = httpx.post(url, json=body, timeout=30)  # no caller key: the static GEMINI_API_KEY goes upstream
        assert r.status_code == 401 and STATIC not in r.text
        assert upstream.keys == [KEY, KEY, STATIC]
    finally:
        rc = proc.stop()
    assert rc == 0
    assert "litellm imported" in proc.output
    assert KEY not in proc.output and STATIC not in proc.output


def test_the_open_files_limit_is_raised_for_the_connection_pool():
    import resource

    from translator.cli import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        expected = 2 * 4096 + 256 if hard == resource.RLIM_INFINITY else min(2 * 4096 + 256, hard)
        assert raise_fd_limit(4096) == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raise_fd_limit(10) == expected  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
