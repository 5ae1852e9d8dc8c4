"""Process contract of keyrelay-ext-authz (one-line errors, flags over env, env over file) and of
keyrelay-key-digest (digest only, never the key, no echo at a prompt)."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from ext_authz.settings import resolve_config
from ext_authz.settings import SettingsError
from tests.support.procs import base_env, free_port, script

from .helpers import running_service

KEY = "sk-cli-test-0123456789"


def run_authz(args: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([script("keyrelay-ext-authz"), "--grpc-addr", f"127.0.0.1:{free_port()}",
                           "--http-addr", f"127.0.0.1:{free_port()}", *args],
                          env=base_env(**(env or {})), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("policy_text,env,expected,names_file", [
    ("version: 1\nrequire_key: true\nkey_format: '(['\n", {}, ":3: key_format is not a valid regular expression",
     True),
    ("version: 1\nallowlist:\n  - sha256: abc\n    tenant: t\n", {}, ":3: sha256 must be 64 hexadecimal", True),
    ("version: 1\n", {"PASSTHROUGH_API_KEY": "maybe"}, "PASSTHROUGH_API_KEY must be true or false", False),
    ("version: 1\n", {"REQUIRE_PASSTHROUGH_KEY": "true", "PASSTHROUGH_API_KEY": "false"},
     "REQUIRE_PASSTHROUGH_KEY=true needs passthrough on, but PASSTHROUGH_API_KEY=false", False),
    ("version: 1\npassthrough: false\n", {"REQUIRE_PASSTHROUGH_KEY": "TRUE"},
     "REQUIRE_PASSTHROUGH_KEY=true needs passthrough on, but passthrough: false in", True),
])
def test_bad_configuration_exits_with_one_line(tmp_path: Path, policy_text: str, env: dict, expected: str,
                                               names_file: bool) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text)
    result = run_authz(["--policy", str(path)], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert lines[0].startswith("keyrelay-ext-authz: ")
    if names_file:
        assert str(path) in lines[0]
    assert "ready:" not in result.stdout


def test_invalid_first_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\n\nrequire_key: sometimes\n")
    result = run_authz(["--policy", str(path)])
    assert result.returncode == 2
    assert result.stderr.strip() == (f"keyrelay-ext-authz: {path}:3: require_key must be true or false, "
                                     "got 'sometimes'")


@pytest.mark.parametrize("args,env,expected", [
    (["--policy", "/nonexistent/policy.yaml"], {}, "/nonexistent/policy.yaml: cannot read policy file"),
    (["--workers", "zero"], {}, "--workers must be a number"),
    (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ([], {"EXT_AUTHZ_WORKERS": "0"}, "--workers must be between"),
    (["--loosen-quiet-seconds", "-1"], {}, "--loosen-quiet-seconds must be between 0 and 3600"),
])
def test_other_startup_errors(args, env, expected) -> None:
    result = run_authz(args, env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr


def test_port_in_use_is_a_one_line_error() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run([script("keyrelay-ext-authz"), "--grpc-addr", f"127.0.0.1:{port}",
                                 "--http-addr", f"127.0.0.1:{free_port()}"], env=base_env(), capture_output=True,
                                text=True, timeout=30)
    assert result.returncode == 2
    assert "cannot bind gRPC address" in result.stderr.strip().splitlines()[-1]


def test_flags_win_over_environment() -> None:
    cfg = resolve_config(["--grpc-addr", "127.0.0.1:7001", "--workers", "3"],
                         {"EXT_AUTHZ_GRPC_ADDR": "0.0.0.0:9", "EXT_AUTHZ_WORKERS": "5",
                          "EXT_AUTHZ_HTTP_ADDR": "127.0.0.1:7002", "EXT_AUTHZ_POLICY": "/p.yaml"})
    assert (cfg.grpc_host, cfg.grpc_port, cfg.workers) == ("127.0.0.1", 7001, 3)
    assert (cfg.http_host, cfg.http_port, cfg.policy) == ("127.0.0.1", 7002, "/p.yaml")
    defaults = resolve_config([], {})
    assert (defaults.grpc_port, defaults.http_port, defaults.workers, defaults.policy) == (9000, 9090, 1, None)
    with pytest.raises(SettingsError, match="host:port"):
        resolve_config(["--grpc-addr", "nonsense"], {})
    v6 = resolve_config(["--grpc-addr", "[::1]:7003"], {})
    assert (v6.grpc_host, v6.grpc_port) == ("::1", 7003)


def test_environment_addresses_are_used_by_the_process() -> None:
    grpc_port, http_port = free_port(), free_port()
    from tests.support.procs import Proc
    proc = Proc([script("keyrelay-ext-authz")], base_env(EXT_AUTHZ_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
                                                         EXT_AUTHZ_HTTP_ADDR=f"127.0.0.1:{http_port}")).wait_ready()
    try:
        assert f"ready: ext_authz grpc on 127.0.0.1:{grpc_port} http on 127.0.0.1:{http_port}" in proc.lines
    finally:
        assert proc.stop() == 0


def test_env_overrides_file_in_the_running_service(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\npassthrough: true\nrequire_key: true\n")
    with running_service(path, env={"REQUIRE_PASSTHROUGH_KEY": "false"}) as svc:
        resp = svc.check({}, route="messages")
        assert resp.status.code == 0 and resp.ok_response.headers[0].header.value == "fallback"
    with running_service(path, env={"PASSTHROUGH_API_KEY": "False"}) as svc:
        resp = svc.check({"x-api-key": KEY}, route="messages")
        keys = [h.header.key for h in resp.ok_response.headers]
        assert "authorization" not in keys and "authorization" in resp.ok_response.headers_to_remove


def test_sigint_stops_cleanly() -> None:
    import signal
    with running_service() as svc:
        assert svc.proc.stop(signal.SIGINT) == 0


# ------------------------------------------------------------------------------------------ key digest


def run_digest(stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([script("keyrelay-key-digest"), *args], input=stdin, capture_output=True, text=True,
                          env=base_env(), timeout=30)


def test_digest_from_stdin() -> None:
    result = run_digest(KEY + "\n")
    assert result.returncode == 0
    assert result.stdout == hashlib.sha256(KEY.encode()).hexdigest() + "\n"
    assert KEY not in result.stdout + result.stderr


def test_digest_key_id_and_several_keys() -> None:
    other = "sk-cli-other-0123456789"
    result = run_digest(f"{KEY}\n\n{other}\n", "--key-id")
    assert result.stdout.split() == [hashlib.sha256(k.encode()).hexdigest()[:16] for k in (KEY, other)]


@pytest.mark.parametrize("stdin,expected", [("", "no key given"), ("sk-a b\n", "contains whitespace"),
                                            ("sk-é\n", "non-ASCII")])
def test_digest_rejects_bad_input(stdin: str, expected: str) -> None:
    result = run_digest(stdin)
    assert result.returncode == 1 and expected in result.stderr and result.stdout == ""


@pytest.mark.parametrize("argv", [["keyrelay-key-digest"], ["keyrelay-policy", "digest"]])
def test_digest_prompt_does_not_echo(argv: list[str]) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, so getpass prompts on it
        env = base_env()
        os.execve(script(argv[0]), [script(argv[0]), *argv[1:]], env)
    output = b""
    deadline = time.monotonic() + 20
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        if not sent and b"API key" in output:
            os.write(fd, KEY.encode() + b"\n")
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert sent and os.waitstatus_to_exitcode(status) == 0
    assert hashlib.sha256(KEY.encode()).hexdigest() in text
    assert KEY not in text


@pytest.mark.parametrize("args,env,expected", [
    ([], {}, 5.0),
    ([], {"EXT_AUTHZ_LOOSEN_QUIET_SECONDS": "12.5"}, 12.5),
    (["--loosen-quiet-seconds", "0"], {"EXT_AUTHZ_LOOSEN_QUIET_SECONDS": "12.5"}, 0.0),
])
def test_loosen_quiet_seconds_setting(args: list[str], env: dict[str, str], expected: float) -> None:
    assert resolve_config(args, env).loosen_quiet_seconds == expected
