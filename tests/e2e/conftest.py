"""End-to-end fixtures: real Envoy (rendered from envoy.yaml), real ext_authz, real translator, a scripted
loopback upstream and the anthropic SDK. Processes start once per session (or module) and every one of them
is recorded in `ALL_PROCS`, so the log-secrecy test can read the output of every process of the run.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import pytest
import yaml

from keyrelay_stack.envoy_config import (ENVOY_YAML, EnvoyEndpoints, dump, envoy_argv, find_envoy, load_source,
                                         render, write_config)
from tests.support.procs import Proc, base_env, free_port, script
from tests.support.upstream import ScriptedUpstream

pytestmark = pytest.mark.e2e

# Personal keys used across the run (the log-secrecy test checks that none of them appears in any log).
KEY_ALPHA = "sk-e2e-alpha-personal-key-0001"     # sent as x-api-key
KEY_BRAVO = "sk-e2e-bravo-personal-key-0002"     # sent as Authorization: Bearer
KEY_CHARLIE = "sk-e2e-charlie-personal-key-0003"  # streaming, tenant-less
KEY_REVOKED = "sk-e2e-revoked-personal-key-0004"
KEY_CLAUDE_CODE = "sk-e2e-claude-code-personal-0005"
KEY_MALFORMED = "this is not a key"
STATIC_OPENAI_KEY = "sk-static-openai-fallback-0009"
STATIC_ANTHROPIC_KEY = "sk-static-anthropic-fallback-0010"
ALL_KEYS = (KEY_ALPHA, KEY_BRAVO, KEY_CHARLIE, KEY_REVOKED, KEY_CLAUDE_CODE, STATIC_OPENAI_KEY, STATIC_ANTHROPIC_KEY)

ALL_PROCS: list[Proc] = []
# Envoy's committed ext_authz timeout: outage tests assert against it.
ENVOY_SOURCE = yaml.safe_load(ENVOY_YAML.read_text())


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def authz_timeout_s() -> float:
    hcm = ENVOY_SOURCE["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    return float(authz["typed_config"]["grpc_service"]["timeout"].rstrip("s"))


def _register(proc: Proc) -> Proc:
    ALL_PROCS.append(proc)
    return proc


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def json_lines(proc: Proc, msg: str, request_id: str, timeout: float = 5.0) -> list[dict]:
    """A process's JSON log lines with `msg` and `request_id`, once there is one (or [] after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in list(proc.lines):
            if line.startswith("{") and request_id in line:
                entry = json.loads(line)
                if entry.get("msg") == msg and entry.get("request_id") == request_id:
                    found.append(entry)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ---------------------------------------------------------------- processes


def start_ext_authz(policy: Path, name: str = "ext_authz", grpc_port: int | None = None, **env: str) -> Proc:
    grpc, http_port = grpc_port or free_port(), free_port()
    proc = Proc([script("keyrelay-ext-authz"), "--grpc-addr", f"127.0.0.1:{grpc}", "--http-addr",
                 f"127.0.0.1:{http_port}", "--policy", str(policy)], base_env(**env), name=name)
    _register(proc).wait_ready(30)
    proc.port = grpc  # type: ignore[attr-defined]
    proc.http_port = http_port  # type: ignore[attr-defined]
    return proc


def start_translator(upstream_url: str, **env: str) -> Proc:
    port = free_port()
    proc = Proc([script("keyrelay-translator"), "--host", "127.0.0.1", "--port", str(port)],
                base_env(OPENAI_BASE_URL=upstream_url + "/v1", OPENAI_API_KEY=STATIC_OPENAI_KEY,
                         ANTHROPIC_BASE_URL=upstream_url, ANTHROPIC_API_KEY=STATIC_ANTHROPIC_KEY, **env),
                name="translator")
    _register(proc).wait_ready(60)
    proc.port = port  # type: ignore[attr-defined]
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return proc


@dataclass
class Envoy:
    proc: Proc
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.proc.lines):
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def log_entry(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        """The first access-log entry matching `predicate` (the access log is flushed every 200 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.access_log():
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching access-log entry; last lines: {self.proc.lines[-5:]}")
            time.sleep(0.1)

    def client(self, key: str | None = None, *, bearer: str | None = None, **kw: Any) -> anthropic.Anthropic:
        return sdk_client(self.url, key, bearer=bearer, **kw)

    def stop(self) -> None:
        self.proc.stop()


def start_envoy(name: str, *, ext_authz_port: int, translator_port: int, tmp: Path,
                access_log: bool = True, patch: Callable[[dict], None] | None = None,
                otlp_port: int | None = None) -> Envoy:
    """Envoy from the rendered envoy.yaml; `patch` may change the rendered dict (for a test-only tweak such as
    a short idle timeout); `otlp_port`: trace every request to an OTLP receiver on that loopback port."""
    port, admin = free_port(), free_port()
    endpoints = EnvoyEndpoints(listen_port=port, admin_port=admin, ext_authz_port=ext_authz_port,
                               translator_port=translator_port, access_log=access_log,
                               otlp_address="127.0.0.1" if otlp_port else None, otlp_port=otlp_port or 4317)
    if patch is None:
        config = write_config(endpoints, tmp)
    else:
        rendered = render(load_source(), endpoints)
        patch(rendered)
        config = tmp / f"envoy-{port}.yaml"
        config.write_text(dump(rendered))
    proc = _register(Proc(envoy_argv(find_envoy(), config, log_level="warning", concurrency=1),
                          base_env(), name=name))
    try:
        wait_for(lambda: http_status(admin, "/ready") == 200, 20, f"{name} admin /ready")
        wait_for(lambda: http_status(port, "/envoy-healthz") == 200, 10, f"{name} listener")
    except RuntimeError:
        proc.stop()
        raise RuntimeError(f"{name} did not start:\n{proc.output[-3000:]}") from None
    return Envoy(proc, port, admin)


def sdk_client(base_url: str, key: str | None = None, *, bearer: str | None = None,
               **kw: Any) -> anthropic.Anthropic:
    """The official SDK, no retries (tests count upstream calls). `key` goes in x-api-key, `bearer` in
    Authorization: Bearer; with neither, no credential header at all. The headers are set explicitly because
    this SDK sends `api_key` as a bearer token, and so that ANTHROPIC_* variables of the environment never leak
    into a test."""
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30.0)
    headers = {"X-Api-Key": key if key is not None else anthropic.Omit(),
               "Authorization": f"Bearer {bearer}" if bearer is not None else anthropic.Omit()}
    headers.update(kw.pop("default_headers", {}))
    return anthropic.Anthropic(base_url=base_url, api_key=None, default_headers=headers, **kw)


def write_policy(path: Path, **overrides: Any) -> Path:
    policy: dict[str, Any] = {
        "version": 1,
        "passthrough": True,
        "require_key": True,
        "key_sources": ["x-api-key", "authorization"],
        "conflicting_keys": "reject",
        "key_format": r"^sk-[A-Za-z0-9._-]{8,256}$",
        "revoked": [{"sha256": hashlib.sha256(KEY_REVOKED.encode()).hexdigest()}],
        "routes": {"root": {"require_key": False}, "health": {"require_key": False, "passthrough": False}},
    }
    policy.update(overrides)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


# ---------------------------------------------------------------- session fixtures


@dataclass
class Stack:
    envoy: Envoy
    ext_authz: Proc
    translator: Proc
    upstream: ScriptedUpstream
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as up:
        yield up


@pytest.fixture
def up(scripted: ScriptedUpstream) -> ScriptedUpstream:
    """The session's scripted upstream, emptied for this test."""
    return scripted.reset()


@pytest.fixture(scope="session")
def policy_file(e2e_tmp: Path) -> Path:
    return write_policy(e2e_tmp / "policy.yaml")


@pytest.fixture(scope="session")
def translator(scripted: ScriptedUpstream) -> Iterator[Proc]:
    proc = start_translator(scripted.url)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def stack(scripted: ScriptedUpstream, translator: Proc, policy_file: Path, e2e_tmp: Path) -> Iterator[Stack]:
    """Key required (the ARCHITECTURE default): Envoy -> ext_authz -> translator -> scripted upstream."""
    authz = start_ext_authz(policy_file, REQUIRE_PASSTHROUGH_KEY="true")
    envoy = start_envoy("envoy", ext_authz_port=authz.port, translator_port=translator.port, tmp=e2e_tmp)
    yield Stack(envoy, authz, translator, scripted)
    envoy.stop()
    authz.stop()


@pytest.fixture(scope="session")
def fallback_authz(policy_file: Path) -> Iterator[Proc]:
    """ext_authz with REQUIRE_PASSTHROUGH_KEY=false: requests without a key use the translator's static key."""
    proc = start_ext_authz(policy_file, name="ext_authz_fallback", REQUIRE_PASSTHROUGH_KEY="false")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def fallback_stack(scripted: ScriptedUpstream, translator: Proc, fallback_authz: Proc,
                   e2e_tmp: Path) -> Iterator[Stack]:
    envoy = start_envoy("envoy_fallback", ext_authz_port=fallback_authz.port, translator_port=translator.port,
                        tmp=e2e_tmp)
    yield Stack(envoy, fallback_authz, translator, scripted)
    envoy.stop()


@pytest.fixture(scope="session")
def contract_recorder() -> Iterator[ScriptedUpstream]:
    """Stands where the translator stands, to record exactly the headers Envoy + ext_authz hand it."""
    with ScriptedUpstream() as rec:
        yield rec


@pytest.fixture(scope="session")
def contract_envoy(fallback_authz: Proc, contract_recorder: ScriptedUpstream, e2e_tmp: Path) -> Iterator[Envoy]:
    envoy = start_envoy("envoy_contract", ext_authz_port=fallback_authz.port,
                        translator_port=contract_recorder.port, tmp=e2e_tmp)
    yield envoy
    envoy.stop()


@pytest.fixture
def recorder(contract_recorder: ScriptedUpstream) -> ScriptedUpstream:
    return contract_recorder.reset()


def marker() -> str:
    """A unique user-agent, to find a request's line in the Envoy access log."""
    return "e2e-" + uuid.uuid4().hex[:12]


class HangingServer:
    """Accepts TCP connections and never answers (a hung ext_authz)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # hold it open, read nothing, write nothing

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
