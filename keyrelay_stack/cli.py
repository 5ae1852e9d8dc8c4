"""`keyrelay-stack`: Envoy + ext_authz + translator (+ the demo upstream) as one local stack.

    keyrelay-stack                     # :8080; demo upstream unless a provider is configured
    keyrelay-stack --no-demo-upstream  # always use the provider settings from the environment
    keyrelay-stack --port-base 18000   # every port from 18000 up (listener, admin, ext_authz, translator, demo)

Output: one line per child line, prefixed `[envoy]`, `[ext_authz]`, `[translator]`, `[demo]`, plus `[stack]`
progress; then the exact Claude Code settings and `ready: stack on http://<host:port>`. Ctrl-C / SIGTERM stops
every child (exit 0); if a child dies, the others are stopped and the exit code is 1, naming the child.
See docs/stack.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import yaml

import keyrelay_tracing
from keyrelay_budgets import REDIS_URL_ENV, redact_url
from keyrelay_common.settings import TRUE_WORDS

from .envoy_config import (DATA, ENVOY_YAML, EnvoyConfigError, EnvoyEndpoints, dump, envoy_argv, find_envoy,
                           load_source, otlp_target, render)
from .processes import PROVIDER_ENV_PREFIXES, child_env, console_script, free_port, raise_open_files_limit
from .redis_server import find_redis_server, ping, redis_argv, redis_url
from .supervisor import ChildFailed, ChildSpec, Interrupted, Supervisor
from .version import add_version_flag

# The example policy ships with the package (a symlink to examples/policy.yaml in the source tree).
DEFAULT_POLICY = DATA / "policy.yaml"
DEFAULT_POLICY_NAME = "examples/policy.yaml"
# Provider settings that mean "serve real traffic" (the same names the translator reads).
PROVIDER_VARS = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "USE_VERTEX_AUTH")
DEMO_KEY = "sk-keyrelay-demo-0001"
# Ctrl-C: children get STOP_TIMEOUT_S after SIGTERM before SIGKILL; the translator's stream grace ends first.
STOP_TIMEOUT_S = 10.0
STACK_STREAM_GRACE_S = 5.0
# The static key the translator holds in demo mode (used only when a policy allows requests without a key);
# the demo upstream accepts anything, so this is not a secret.
DEMO_STATIC_KEY = "sk-keyrelay-demo-static"


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class Ports:
    listen: int
    admin: int
    ext_authz: int
    ext_authz_http: int
    translator: int
    demo: int  # 0: pick a free port


def _truthy(value: str | None) -> bool:
    """Whether the services will read `value` as true (an invalid value stops them with their own message)."""
    return (value or "").strip().lower() in TRUE_WORDS


def provider_configured(env: Mapping[str, str]) -> bool:
    return any(env.get(v) for v in PROVIDER_VARS if v != "USE_VERTEX_AUTH") or _truthy(env.get("USE_VERTEX_AUTH"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="keyrelay-stack",
                                description="Run Envoy + ext_authz + translator locally (see docs/stack.md).")
    p.add_argument("--port", type=int, default=None, help="Envoy listener port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="Envoy listener address (default 127.0.0.1)")
    p.add_argument("--admin-port", type=int, default=None, help="Envoy admin port, on 127.0.0.1 (default 9901)")
    p.add_argument("--ext-authz-port", type=int, default=None, help="ext_authz gRPC port (default 9000)")
    p.add_argument("--ext-authz-http-port", type=int, default=None, help="ext_authz metrics/health port (9090)")
    p.add_argument("--translator-port", type=int, default=None, help="translator port (default 8082)")
    p.add_argument("--demo-port", type=int, default=None, help="demo upstream port (default: a free port)")
    p.add_argument("--port-base", type=int, default=None,
                   help="use PORT_BASE.. PORT_BASE+5 for listener, admin, ext_authz, ext_authz http, translator, "
                        "demo (explicit port flags still win)")
    p.add_argument("--demo-upstream", action=argparse.BooleanOptionalAction, default=None,
                   help="serve from the built-in demo upstream (default: only when no provider is configured: "
                        "none of " + ", ".join(PROVIDER_VARS) + ")")
    p.add_argument("--policy", default=None,
                   help=f"ext_authz policy file (default: the packaged {DEFAULT_POLICY_NAME}; 'builtin' for "
                        "ext_authz's built-in defaults)")
    p.add_argument("--envoy-log-level", default="warning", help="Envoy log level (default warning)")
    p.add_argument("--envoy-concurrency", type=int, default=None, help="Envoy worker threads (default: cores)")
    p.add_argument("--envoy-config", default=str(ENVOY_YAML),
                   help="the envoy.yaml to render (default: the packaged envoy.yaml, the same bytes as "
                        "k8s/overlays/standalone/envoy.yaml)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for each part")
    p.add_argument("--with-redis", action="store_true",
                   help="start redis-server (Debian package redis-server) on a free loopback port for the budget "
                        "counters and pass its URL to ext_authz and the translator (docs/usage.md#budgets)")
    add_version_flag(p)
    return p.parse_args(list(argv) if argv is not None else None)


def choose_ports(ns: argparse.Namespace) -> Ports:
    base = ns.port_base
    defaults = (8080, 9901, 9000, 9090, 8082, 0) if base is None else tuple(base + i for i in range(6))
    given = (ns.port, ns.admin_port, ns.ext_authz_port, ns.ext_authz_http_port, ns.translator_port, ns.demo_port)
    values = [g if g is not None else d for g, d in zip(given, defaults)]
    for v in values:
        if not 0 <= v <= 65535:
            raise UsageError(f"port {v} is out of range")
    fixed = [v for v in values if v]
    if len(set(fixed)) != len(fixed):
        raise UsageError(f"ports must differ, got {values}")
    return Ports(*values)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(ports: Ports, host: str) -> None:
    named = [("Envoy listener", ports.listen, "--port", host), ("Envoy admin", ports.admin, "--admin-port", None),
             ("ext_authz gRPC", ports.ext_authz, "--ext-authz-port", None),
             ("ext_authz HTTP", ports.ext_authz_http, "--ext-authz-http-port", None),
             ("translator", ports.translator, "--translator-port", None),
             ("demo upstream", ports.demo, "--demo-port", None)]
    for what, port, flag, bind_host in named:
        if port and not _port_free(bind_host or "127.0.0.1", port):
            raise UsageError(f"port {port} ({what}) is already in use; pick another with {flag} or --port-base")


def _script(name: str) -> str:
    try:
        return console_script(name, hint="run `make run`, which installs the project into .venv")
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def _child_env(env: Mapping[str, str], *, provider: bool) -> dict[str, str]:
    return child_env(env, drop=() if provider else PROVIDER_ENV_PREFIXES)


def describe_policy(path: Path | None, env: Mapping[str, str]) -> str:
    """One line saying what the policy accepts (never a key; revoked/allowlist entries are digests)."""
    if path is None:
        text = "ext_authz built-in defaults"
        doc: dict = {}
    else:
        text = DEFAULT_POLICY_NAME if path == DEFAULT_POLICY else str(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            doc = {}  # ext_authz reports the precise error and exits
    parts = []
    require = doc.get("require_key", True)
    if env.get("REQUIRE_PASSTHROUGH_KEY"):
        require = _truthy(env["REQUIRE_PASSTHROUGH_KEY"])
        parts.append("REQUIRE_PASSTHROUGH_KEY from the environment")
    parts.insert(0, "a key is required" if require else "requests without a key use the translator's static key")
    if doc.get("key_format"):
        parts.append(f"keys must match {doc['key_format']}")
    if doc.get("allowlist") is not None:
        parts.append(f"only {len(doc['allowlist'])} allowlisted key(s) pass")
    elif path is not None:
        parts.append("any well-formed key passes")
    if doc.get("revoked"):
        parts.append(f"{len(doc['revoked'])} revoked key digest(s)")
    return f"{text}: " + "; ".join(parts)


def _http_status(host: str, port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


_redact_url = redact_url  # a base URL fit for a log line: any user:password part replaced


def usage_banner(url: str, demo: bool) -> list[str]:
    key_line = (f"export ANTHROPIC_API_KEY={DEMO_KEY}   # demo key: the demo policy accepts any well-formed sk-... key"
                if demo else
                "export ANTHROPIC_API_KEY=sk-...   # replace with YOUR personal key (e.g. a LiteLLM virtual key)")
    lines = ["", "=" * 78, "Use Claude Code through keyrelay:", "",
             f"  export ANTHROPIC_BASE_URL={url}", f"  {key_line}",
             "  export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "  claude", ""]
    if demo:
        lines += ["DEMO MODE: answers come from the built-in demo upstream (fixed texts, no model). Try:",
                  "  claude -p 'use the Bash tool to run `ls`'",
                  "Configure OPENAI_BASE_URL/OPENAI_API_KEY (or another provider) for real traffic.", ""]
    lines.append("=" * 78)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    raise_open_files_limit()  # one socket per open stream (keyrelay_stack/processes.py)
    try:
        ns = parse_args(argv)
        ports = choose_ports(ns)
        check_ports_free(ports, ns.host)
        env = dict(os.environ)
        demo = ns.demo_upstream if ns.demo_upstream is not None else not provider_configured(env)
        if ns.policy == "builtin":
            policy: Path | None = None
        else:
            policy = Path(ns.policy).resolve() if ns.policy else DEFAULT_POLICY
            if not policy.is_file():
                raise UsageError(f"policy file {policy} not found")
        envoy_bin = find_envoy()
        # OTEL_EXPORTER_OTLP_ENDPOINT (inherited by ext_authz and the translator) also turns on Envoy's tracer.
        try:
            otlp = otlp_target(keyrelay_tracing.endpoint_from_env(env))
        except EnvoyConfigError as exc:
            raise UsageError(str(exc)) from None
        endpoints = EnvoyEndpoints(listen_address=ns.host, listen_port=ports.listen, admin_port=ports.admin,
                                   ext_authz_port=ports.ext_authz, translator_port=ports.translator,
                                   otlp_address=otlp[0] if otlp else None, otlp_port=otlp[1] if otlp else 4317)
        try:
            envoy_text = dump(render(load_source(ns.envoy_config), endpoints))
        except OSError as exc:
            raise UsageError(f"cannot read {ns.envoy_config} ({exc.strerror}); pass an existing file with "
                             "--envoy-config") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UsageError(f"{ns.envoy_config}: invalid YAML{where}") from None
        except (EnvoyConfigError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{ns.envoy_config} does not have the shape of envoy.yaml "
                             f"({type(exc).__name__}: {exc})") from None
        scripts = {name: _script(name) for name in ("keyrelay-ext-authz", "keyrelay-translator")}
        redis_bin = find_redis_server() if ns.with_redis else None
        if ns.with_redis and redis_bin is None:
            raise UsageError("--with-redis needs redis-server (sudo apt-get install -y redis-server)")
    except (UsageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2

    sup = Supervisor()
    sup.install_signal_handlers()
    say = sup.say
    demo_port = ports.demo or (free_port() if demo else 0)
    public_host = "127.0.0.1" if ns.host in ("0.0.0.0", "") else ns.host
    url = f"http://{public_host}:{ports.listen}"

    if demo:
        say("[stack] " + "!" * 70)
        say("[stack] DEMO MODE: no provider configured (none of " + ", ".join(PROVIDER_VARS) + ").")
        say(f"[stack] The translator is pointed at the built-in demo upstream on 127.0.0.1:{demo_port}:")
        say("[stack] deterministic replies, no model. Use --no-demo-upstream to use your provider settings.")
        say("[stack] " + "!" * 70)
    else:
        target = _redact_url(env.get("OPENAI_BASE_URL", "")) or (
            f"provider settings from the environment (PREFERRED_PROVIDER={env.get('PREFERRED_PROVIDER', 'openai')})")
        say(f"[stack] serving real traffic: the translator uses {target}")
    say(f"[stack] policy: {describe_policy(policy, env)}")

    workdir = Path(tempfile.mkdtemp(prefix="keyrelay-stack-"))
    config = workdir / f"envoy-{ports.listen}.yaml"
    config.write_text(envoy_text, encoding="utf-8")
    say(f"[stack] envoy config rendered from {ns.envoy_config} to {config}")

    specs: list[ChildSpec] = []
    budget_env: dict[str, str] = {}
    if redis_bin is not None:
        redis_port = free_port()
        budget_env[REDIS_URL_ENV] = redis_url(redis_port)
        say(f"[stack] budget counters in redis-server on {budget_env[REDIS_URL_ENV]} (in memory only)")
        specs.append(ChildSpec("redis", redis_argv(redis_bin, redis_port), _child_env(env, provider=False),
                               probe=lambda: ping(redis_port)))
    if demo:
        specs.append(ChildSpec("demo", [sys.executable, "-m", "keyrelay_stack.demo_upstream", "--port",
                                        str(demo_port)], _child_env(env, provider=False)))
    authz_argv = [scripts["keyrelay-ext-authz"], "--grpc-addr", f"127.0.0.1:{ports.ext_authz}",
                  "--http-addr", f"127.0.0.1:{ports.ext_authz_http}"]
    if policy is not None:
        authz_argv += ["--policy", str(policy)]
    specs.append(ChildSpec("ext_authz", authz_argv, {**_child_env(env, provider=False), **budget_env}))
    translator_env = {**_child_env(env, provider=not demo), **budget_env}
    if demo:
        translator_env.update(OPENAI_BASE_URL=f"http://127.0.0.1:{demo_port}/v1", OPENAI_API_KEY=DEMO_STATIC_KEY,
                              PREFERRED_PROVIDER="openai", BIG_MODEL="keyrelay-demo-big",
                              SMALL_MODEL="keyrelay-demo-small")
    # Streams open at Ctrl-C end with their overloaded_error event before the supervisor's SIGKILL.
    translator_env.setdefault("TRANSLATOR_SHUTDOWN_GRACE", f"{STACK_STREAM_GRACE_S:g}")
    specs.append(ChildSpec("translator", [scripts["keyrelay-translator"], "--host", "127.0.0.1", "--port",
                                          str(ports.translator)], translator_env))
    specs.append(ChildSpec(
        "envoy", envoy_argv(envoy_bin, config, log_level=ns.envoy_log_level, concurrency=ns.envoy_concurrency),
        _child_env(env, provider=False), probe=lambda: _http_status("127.0.0.1", ports.admin, "/ready") == 200))

    code, reason = 0, ""
    started = time.monotonic()
    try:
        say("[stack] starting " + ", ".join(s.name for s in specs))
        children = sup.spawn(specs)
        for child in children:
            say(f"[stack] {child.name}: pid {child.pid}")
        for child in children:
            took = sup.wait_ready(child, ns.ready_timeout)
            say(f"[stack] {child.name} ready ({took:.1f}s)")
        # The whole path: Envoy -> ext_authz -> translator answers the health route (a decision, not a 503).
        sup.wait_until(lambda: _http_status(public_host, ports.listen, "/readyz") in (200, 401, 403),
                       ns.ready_timeout, "the path Envoy -> ext_authz -> translator did not answer /readyz")
        say(f"[stack] all parts ready in {time.monotonic() - started:.1f}s")
        for line in usage_banner(url, demo):
            say(line)
        say(f"ready: stack on {url}")
        sup.run_until_event()
    except Interrupted as exc:
        say(f"[stack] {exc}; stopping all parts")
    except ChildFailed as exc:
        say(f"[stack] error: {exc}; stopping the other parts")
        code, reason = 1, str(exc)
    except TimeoutError as exc:
        say(f"[stack] error: {exc}; stopping all parts")
        code, reason = 1, str(exc)
    except OSError as exc:  # a part could not be started at all
        say(f"[stack] error: cannot start a part: {exc}; stopping all parts")
        code, reason = 1, f"cannot start a part: {exc}"
    finally:
        sup.stop_all(STOP_TIMEOUT_S)
        shutil.rmtree(workdir, ignore_errors=True)
    if code:
        print(f"error: stack stopped: {reason}", file=sys.stderr, flush=True)
    else:
        say("[stack] stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
