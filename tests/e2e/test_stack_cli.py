"""`keyrelay-stack` as a user runs it: one command, prefixed logs, the Claude Code lines, a working endpoint,
and no orphan process after SIGTERM or after one part dies."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import anthropic
import pytest

from keyrelay_stack.cli import DEMO_KEY
from tests.e2e.conftest import ALL_PROCS, KEY_ALPHA, KEY_BRAVO, sdk_client
from tests.support.procs import Proc, base_env, free_port, script
from tests.support.redis import ensure_redis_server

pytestmark = pytest.mark.e2e


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return set()
        time.sleep(0.1)
    return {p for p in pids if alive(p)}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def environ(pid: int) -> dict[bytes, bytes]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.split(b"=", 1) for e in entries if b"=" in e)


def start_stack(*args: str, **env: str) -> tuple[Proc, int]:
    port = free_port()
    argv = [script("keyrelay-stack"), "--port", str(port), "--admin-port", str(free_port()),
            "--ext-authz-port", str(free_port()), "--ext-authz-http-port", str(free_port()),
            "--translator-port", str(free_port()), "--envoy-concurrency", "1", *args]
    proc = Proc(argv, base_env(**env), name="keyrelay-stack")
    ALL_PROCS.append(proc)
    proc.wait_ready(90)
    assert any(line.startswith("ready: stack on ") for line in proc.lines), proc.output[-2000:]
    return proc, port


def test_demo_stack_serves_the_sdk_and_stops_cleanly():
    proc, port = start_stack()
    try:
        out = proc.output
        assert "DEMO MODE" in out
        assert f"  export ANTHROPIC_BASE_URL=http://127.0.0.1:{port}" in proc.lines
        assert any(line.strip().startswith(f"export ANTHROPIC_API_KEY={DEMO_KEY}") for line in proc.lines)
        assert f"ready: stack on http://127.0.0.1:{port}" in proc.lines
        for prefix in ("[demo] ready:", "[ext_authz] ready:", "[translator] ready:"):
            assert any(line.startswith(prefix) for line in proc.lines), prefix

        # The printed demo key works, and so does any well-formed personal key.
        for key in (DEMO_KEY, KEY_ALPHA):
            reply = sdk_client(f"http://127.0.0.1:{port}", key).messages.create(
                model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hello"}])
            assert "keyrelay demo upstream" in reply.content[0].text
        kids = descendants(proc.popen.pid)
        assert len(kids) >= 4  # demo, ext_authz, translator, envoy (and any workers)
        # The translator's stream grace ends before the stack's SIGKILL.
        translators = [environ(k) for k in kids if b"keyrelay-translator" in cmdline(k)]
        assert translators and all(e.get(b"TRANSLATOR_SHUTDOWN_GRACE") == b"5" for e in translators)
    finally:
        code = proc.stop(signal.SIGTERM, timeout=20)
    assert code == 0, proc.output[-2000:]
    assert wait_gone(kids) == set()
    assert proc.lines[-1] == "[stack] stopped"
    assert any(line.startswith("[envoy] {") for line in proc.lines)  # the JSON access log, prefixed


def test_stack_with_redis_enforces_budgets_and_stops_redis(tmp_path):
    ensure_redis_server()
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nroutes: {root: {require_key: false}, health: {require_key: false, "
                      "passthrough: false}}\nbudgets: {per_key: {requests_per_minute: 2}}\n")
    proc, port = start_stack("--with-redis", "--policy", str(policy))
    try:
        url_line = next(line for line in proc.lines if "budget counters in redis-server on" in line)
        redis_url = url_line.rsplit(" on ", 1)[1].split()[0]
        client = sdk_client(f"http://127.0.0.1:{port}", KEY_ALPHA)
        statuses = []
        for _ in range(3):
            try:
                client.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                       messages=[{"role": "user", "content": "hello"}])
                statuses.append(200)
            except anthropic.APIStatusError as exc:
                statuses.append(exc.status_code)
            time.sleep(0.4)
        assert statuses == [200, 200, 429]
        usage = subprocess.run([script("keyrelay-usage"), "--policy", str(policy), "--keys", "--json"],
                               capture_output=True, text=True, timeout=30, env=base_env(KEYRELAY_REDIS_URL=redis_url))
        rows = [json.loads(line) for line in usage.stdout.splitlines()]
        assert [(r["scope"], r["requests_window"], r["requests_left"]) for r in rows] == [("key", 2, 0)]
        pids = {name: int(pid) for name, pid in re.findall(r"^\[stack\] (\w+): pid (\d+)$", proc.output, re.M)}
        assert "redis" in pids
        kids = descendants(proc.popen.pid)
    finally:
        code = proc.stop(signal.SIGTERM, timeout=20)
    assert code == 0, proc.output[-2000:]
    assert wait_gone(kids) == set() and not alive(pids["redis"])


def test_provider_stack_serves_real_traffic_and_exits_nonzero_when_a_part_dies(scripted):
    scripted.reset()
    proc, port = start_stack(OPENAI_BASE_URL=scripted.url + "/v1")
    try:
        assert "DEMO MODE" not in proc.output
        assert "export ANTHROPIC_API_KEY=sk-...   # replace with YOUR personal key" in proc.output
        reply = sdk_client(f"http://127.0.0.1:{port}", bearer=KEY_BRAVO).messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hello"}])
        assert reply.content[0].text == "Hello!"
        assert scripted.keys == [KEY_BRAVO]

        kids = descendants(proc.popen.pid)
        pids = {name: int(pid) for name, pid in re.findall(r"^\[stack\] (\w+): pid (\d+)$", proc.output, re.M)}
        assert set(pids) == {"ext_authz", "translator", "envoy"}
        os.kill(pids["translator"], signal.SIGKILL)
        code = proc.popen.wait(30)
    finally:
        proc.stop()
    assert code == 1
    assert "translator exited unexpectedly" in proc.output
    assert proc.lines[-1].startswith("error: stack stopped: translator exited unexpectedly")
    assert wait_gone(kids) == set()


def test_busy_port_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        proc = Proc([script("keyrelay-stack"), "--port", str(busy)], base_env(), name="keyrelay-stack-busy")
        code = proc.popen.wait(30)
        proc.stop()
    assert code == 2
    assert proc.lines == [f"error: port {busy} (Envoy listener) is already in use; pick another with --port or "
                          f"--port-base"]


# ---------------------------------------------------------------- pure parts of the CLI

from keyrelay_stack import cli  # noqa: E402


@pytest.mark.parametrize("env,expected", [
    ({}, False),
    ({"OPENAI_BASE_URL": "http://llm/v1"}, True),
    ({"OPENAI_API_KEY": "sk-x"}, True),
    ({"ANTHROPIC_API_KEY": "sk-x"}, True),
    ({"GEMINI_API_KEY": "g"}, True),
    ({"USE_VERTEX_AUTH": "true"}, True),
    ({"USE_VERTEX_AUTH": "false"}, False),
    ({"OPENAI_API_KEY": ""}, False),
    ({"BIG_MODEL": "gpt-4.1"}, False),
])
def test_provider_configured(env, expected):
    assert cli.provider_configured(env) is expected


@pytest.mark.parametrize("argv,expected", [
    ([], cli.Ports(8080, 9901, 9000, 9090, 8082, 0)),
    (["--port", "1234"], cli.Ports(1234, 9901, 9000, 9090, 8082, 0)),
    (["--port-base", "18000"], cli.Ports(18000, 18001, 18002, 18003, 18004, 18005)),
    (["--port-base", "18000", "--translator-port", "7000"], cli.Ports(18000, 18001, 18002, 18003, 7000, 18005)),
])
def test_choose_ports(argv, expected):
    assert cli.choose_ports(cli.parse_args(argv)) == expected


@pytest.mark.parametrize("argv", [["--port", "9000"], ["--port", "70000"]])
def test_choose_ports_rejects_clashes_and_out_of_range(argv):
    with pytest.raises(cli.UsageError):
        cli.choose_ports(cli.parse_args(argv))


@pytest.mark.parametrize("url,expected", [
    ("https://user:pw@llm.example:8443/v1", "https://***@llm.example:8443/v1"),
    ("http://llm.example/v1", "http://llm.example/v1"),
    ("", ""),
])
def test_redact_url(url, expected):
    assert cli._redact_url(url) == expected


def test_describe_policy_says_what_passes():
    text = cli.describe_policy(cli.DEFAULT_POLICY, {})
    assert text.startswith("examples/policy.yaml: a key is required")
    assert "any well-formed key passes" in text and "1 revoked key digest(s)" in text
    assert "static key" in cli.describe_policy(cli.DEFAULT_POLICY, {"REQUIRE_PASSTHROUGH_KEY": "false"})
    assert cli.describe_policy(None, {}).startswith("ext_authz built-in defaults")


@pytest.mark.parametrize("demo", [True, False])
def test_usage_banner_prints_exact_exports(demo):
    lines = cli.usage_banner("http://127.0.0.1:8080", demo)
    assert "  export ANTHROPIC_BASE_URL=http://127.0.0.1:8080" in lines
    key_line = next(line for line in lines if "ANTHROPIC_API_KEY=" in line)
    assert key_line.startswith(f"  export ANTHROPIC_API_KEY={cli.DEMO_KEY if demo else 'sk-...'} ")
    assert any("DEMO MODE" in line for line in lines) is demo


@pytest.mark.parametrize("content,message", [
    (None, "cannot read"),
    ("a: [\n", "invalid YAML at line 2"),
    ("a: 1\n", "does not have the shape of envoy.yaml"),
])
def test_bad_envoy_config_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "envoy.yaml"
    if content is not None:
        path.write_text(content)
    ports = [str(free_port()) for _ in range(5)]
    assert cli.main(["--envoy-config", str(path), "--port", ports[0], "--admin-port", ports[1], "--ext-authz-port",
                     ports[2], "--ext-authz-http-port", ports[3], "--translator-port", ports[4]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
