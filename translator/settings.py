"""Typed translator settings from command-line flags and environment variables (flags win).

The provider variables keep the names of the single-process proxy this project grew from
(OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY, GEMINI_API_KEY, USE_VERTEX_AUTH, VERTEX_PROJECT,
VERTEX_LOCATION, PREFERRED_PROVIDER, BIG_MODEL, SMALL_MODEL), so an existing environment keeps working.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Sequence

from keyrelay_budgets import REDIS_URL_ENV, check_url, redact_url
from keyrelay_common.settings import parse_bool
from keyrelay_stack.version import add_version_flag

PROVIDERS = ("openai", "google", "anthropic")

# Defaults per preferred provider, the same ones the original proxy used.
DEFAULT_MODELS = {
    "openai": ("gpt-4.1", "gpt-4.1-mini"),
    "google": ("gemini-2.5-pro", "gemini-2.5-flash"),
    "anthropic": ("claude-sonnet-4-5", "claude-haiku-4-5"),
}

MAX_BODY_BYTES = 32 * 1024 * 1024
MiB = 1024 * 1024
# Tenant names the usage metrics label by (the policy's tenants); more would make the metrics unbounded in practice.
MAX_TENANTS = 1000
# The same names ext_authz's policy accepts for a tenant.
TENANT_NAME = re.compile(r"^[A-Za-z0-9_.:@/-]{1,128}$")
# Label values the usage metrics use for requests without a tenant and for tenants not in the list.
RESERVED_TENANTS = ("none", "other")


class ConfigError(ValueError):
    """Bad configuration; the message is one line and never contains a secret."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8082
    workers: int = 1
    routes_file: str | None = None
    log_level: str = "info"

    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str = "https://api.anthropic.com"
    gemini_api_key: str | None = field(default=None, repr=False)
    gemini_base_url: str | None = None
    use_vertex_auth: bool = False
    vertex_project: str | None = None
    vertex_location: str | None = None
    preferred_provider: str = "openai"
    big_model: str = "gpt-4.1"
    small_model: str = "gpt-4.1-mini"

    # Streaming and upstream behaviour.
    ping_interval_s: float = 10.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    max_body_bytes: int = MAX_BODY_BYTES
    # Upstream connections per worker: one long stream holds one, so this is how many concurrent streams a
    # worker can carry; a request that finds every slot busy waits at most pool_wait_s, then 529.
    max_connections: int = 4096
    pool_wait_s: float = 5.0
    # What an upstream may send (docs/translator.md, "Limits").
    max_response_head_bytes: int = 64 * 1024
    max_response_head_lines: int = 100
    max_response_body_bytes: int = 16 * MiB  # a non-streaming answer, after decompression
    max_sse_event_bytes: int = 4 * MiB  # one server-sent event of a streamed answer
    # What a client may send beyond the body size (Anthropic's documented limits where it has them).
    max_messages: int = 100_000
    max_content_blocks: int = 100_000
    max_images: int = 600
    # Repeated tool definitions decoded once (translator/repeated_tools.py): the cache's text bytes; 0 = off.
    tools_cache_bytes: int = 4 * MiB
    # Streams in flight at SIGTERM get this long, then end with an overloaded_error event. Keep it below the
    # pod's terminationGracePeriodSeconds minus its preStop sleep (k8s/base/translator/deployment.yaml).
    shutdown_grace_s: float = 100.0
    # Providers a client's `provider/model` name may reach, besides those the settings and the routing file
    # configure (comma-separated LiteLLM provider names).
    providers: str = ""
    preload_litellm: bool = False
    # Accept a client's x-api-key as the upstream credential when no bearer credential is present
    # (direct use without Envoy; behind Envoy ext_authz always removes x-api-key).
    accept_x_api_key: bool = True
    # Tenants (as ext_authz's policy names them in x-authz-tenant) that get their own series in the usage
    # metrics; any other tenant is counted as `other` (docs/usage.md).
    tenants: tuple[str, ...] = ()
    # Redis holding the budget counters (docs/usage.md#budgets): usage is added there after each response.
    redis_url: str | None = field(default=None, repr=False)

    def to_env(self) -> dict[str, str]:
        """Serialize for worker processes (uvicorn --workers re-imports the app in each worker)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                out[f"KEYRELAY_TRANSLATOR__{f.name}"] = ",".join(value)
            elif value is not None:
                out[f"KEYRELAY_TRANSLATOR__{f.name}"] = str(value)
        return out

    def public_dict(self) -> dict[str, object]:
        """Settings without secrets, for logs."""
        d = asdict(self)
        for name in ("openai_api_key", "anthropic_api_key", "gemini_api_key"):
            d[name] = "set" if d[name] else None
        d["redis_url"] = redact_url(self.redis_url) if self.redis_url else None
        return d


# name -> (environment variables in order of preference, flag)
_SOURCES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "host": (("TRANSLATOR_HOST",), "--host"),
    "port": (("TRANSLATOR_PORT",), "--port"),
    "workers": (("TRANSLATOR_WORKERS",), "--workers"),
    "routes_file": (("TRANSLATOR_ROUTES",), "--routes"),
    "log_level": (("TRANSLATOR_LOG_LEVEL",), "--log-level"),
    "openai_api_key": (("OPENAI_API_KEY",), None),  # secrets only from the environment
    "openai_base_url": (("OPENAI_BASE_URL", "OPENAI_API_BASE"), "--openai-base-url"),
    "anthropic_api_key": (("ANTHROPIC_API_KEY",), None),
    "anthropic_base_url": (("ANTHROPIC_BASE_URL",), "--anthropic-base-url"),
    "gemini_api_key": (("GEMINI_API_KEY",), None),
    "gemini_base_url": (("GEMINI_BASE_URL",), "--gemini-base-url"),
    "use_vertex_auth": (("USE_VERTEX_AUTH",), "--use-vertex-auth"),
    "vertex_project": (("VERTEX_PROJECT",), "--vertex-project"),
    "vertex_location": (("VERTEX_LOCATION",), "--vertex-location"),
    "preferred_provider": (("PREFERRED_PROVIDER",), "--preferred-provider"),
    "big_model": (("BIG_MODEL",), "--big-model"),
    "small_model": (("SMALL_MODEL",), "--small-model"),
    "ping_interval_s": (("TRANSLATOR_PING_INTERVAL",), "--ping-interval"),
    "connect_timeout_s": (("TRANSLATOR_CONNECT_TIMEOUT",), "--connect-timeout"),
    "read_timeout_s": (("TRANSLATOR_READ_TIMEOUT",), "--read-timeout"),
    "max_body_bytes": (("TRANSLATOR_MAX_BODY_BYTES",), "--max-body-bytes"),
    "max_connections": (("TRANSLATOR_MAX_CONNECTIONS",), "--max-connections"),
    "pool_wait_s": (("TRANSLATOR_POOL_WAIT",), "--pool-wait"),
    "max_response_head_bytes": (("TRANSLATOR_MAX_RESPONSE_HEAD_BYTES",), "--max-response-head-bytes"),
    "max_response_head_lines": (("TRANSLATOR_MAX_RESPONSE_HEAD_LINES",), "--max-response-head-lines"),
    "max_response_body_bytes": (("TRANSLATOR_MAX_RESPONSE_BODY_BYTES",), "--max-response-body-bytes"),
    "max_sse_event_bytes": (("TRANSLATOR_MAX_SSE_EVENT_BYTES",), "--max-sse-event-bytes"),
    "max_messages": (("TRANSLATOR_MAX_MESSAGES",), "--max-messages"),
    "max_content_blocks": (("TRANSLATOR_MAX_CONTENT_BLOCKS",), "--max-content-blocks"),
    "max_images": (("TRANSLATOR_MAX_IMAGES",), "--max-images"),
    "tools_cache_bytes": (("TRANSLATOR_TOOLS_CACHE_BYTES",), "--tools-cache-bytes"),
    "shutdown_grace_s": (("TRANSLATOR_SHUTDOWN_GRACE",), "--shutdown-grace"),
    "providers": (("TRANSLATOR_PROVIDERS",), "--providers"),
    "preload_litellm": (("TRANSLATOR_PRELOAD_LITELLM",), "--preload-litellm"),
    "accept_x_api_key": (("TRANSLATOR_ACCEPT_X_API_KEY",), "--accept-x-api-key"),
    "tenants": (("TRANSLATOR_TENANTS",), "--tenants"),
    "redis_url": ((REDIS_URL_ENV,), "--redis-url"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keyrelay-translator",
        description="Anthropic Messages API in front of OpenAI-compatible, Anthropic, Gemini and other LiteLLM "
                    "backends. Flags win over environment variables; provider keys come only from the environment.")
    for name, (envs, flag) in _SOURCES.items():
        if flag:
            p.add_argument(flag, dest=name, default=None, metavar="VALUE", help=f"(env {', '.join(envs)})")
    return add_version_flag(p)


def _bool(name: str, raw: str) -> bool:
    return False if not raw.strip() else parse_bool(name, raw, ConfigError)  # empty: false


def _number(name: str, raw: str, kind: type, low: float, high: float) -> int | float:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is outside {low}..{high}")
    return value


def _url(name: str, raw: str) -> str:
    v = raw.strip().rstrip("/")
    if not v.startswith(("http://", "https://")) or len(v) < 9:
        raise ConfigError(f"{name}: expected an http(s) URL")
    return v


def _tenants(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list of tenant names (duplicates dropped, order kept)."""
    names = [t.strip() for t in raw.split(",") if t.strip()]
    out = tuple(dict.fromkeys(names))
    if len(out) > MAX_TENANTS:
        raise ConfigError(f"{name}: {len(out)} tenants, at most {MAX_TENANTS}")
    for t in out:
        if not TENANT_NAME.match(t):
            raise ConfigError(f"{name}: a tenant must be 1-128 characters of letters, digits and _ . : @ / -")
        if t in RESERVED_TENANTS:
            raise ConfigError(f"{name}: {t!r} is reserved (the metrics' bucket for "
                              f"{'requests without a tenant' if t == 'none' else 'tenants not listed'})")
    return out


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from flags and environment. Raises ConfigError (one line) on bad values."""
    env = os.environ if env is None else env
    try:
        ns = _parser().parse_args(list(argv) if argv is not None else [])
    except SystemExit as exc:  # argparse already printed its usage line (or --help / --version: exit 0)
        if not exc.code:
            raise
        raise ConfigError("invalid command line") from exc
    raw: dict[str, tuple[str, str]] = {}  # name -> (source label, raw value)
    for name, (envs, flag) in _SOURCES.items():
        flag_value = getattr(ns, name, None) if flag else None
        if flag_value is not None:
            raw[name] = (flag, flag_value)
            continue
        for var in envs:
            if env.get(var) not in (None, ""):
                raw[name] = (var, env[var])
                break
    # Serialized settings from the parent process (multi-worker mode) fill anything not set otherwise.
    for f in fields(Settings):
        var = f"KEYRELAY_TRANSLATOR__{f.name}"
        if f.name not in raw and env.get(var) is not None:
            raw[f.name] = (var, env[var])
    return _build(raw)


def _build(raw: dict[str, tuple[str, str]]) -> Settings:
    values: dict[str, object] = {}
    for name, (label, value) in raw.items():
        if name in ("port",):
            values[name] = _number(label, value, int, 0, 65535)
        elif name == "workers":
            values[name] = _number(label, value, int, 1, 64)
        elif name in ("ping_interval_s",):
            values[name] = _number(label, value, float, 0.05, 3600)
        elif name in ("connect_timeout_s", "read_timeout_s"):
            values[name] = _number(label, value, float, 0.05, 86400)
        elif name == "max_body_bytes":
            values[name] = _number(label, value, int, 1024, 1 << 31)
        elif name == "max_connections":
            values[name] = _number(label, value, int, 1, 100000)
        elif name in ("pool_wait_s", "shutdown_grace_s"):
            values[name] = _number(label, value, float, 0, 3600)
        elif name in ("max_response_head_bytes", "max_response_body_bytes", "max_sse_event_bytes"):
            values[name] = _number(label, value, int, 1024, 1 << 31)
        elif name == "tools_cache_bytes":
            values[name] = _number(label, value, int, 0, 1 << 30)
        elif name in ("max_response_head_lines", "max_messages", "max_content_blocks", "max_images"):
            values[name] = _number(label, value, int, 1, 10_000_000)
        elif name == "providers":
            values[name] = ",".join(p.strip().lower() for p in value.split(",") if p.strip())
        elif name in ("use_vertex_auth", "preload_litellm", "accept_x_api_key"):
            values[name] = _bool(label, value)
        elif name in ("openai_base_url", "anthropic_base_url", "gemini_base_url"):
            values[name] = _url(label, value)
        elif name == "preferred_provider":
            v = value.strip().lower()
            if v not in PROVIDERS:
                raise ConfigError(f"{label}: expected one of {', '.join(PROVIDERS)}, got {value!r}")
            values[name] = v
        elif name == "log_level":
            v = value.strip().lower()
            if v not in ("critical", "error", "warning", "info", "debug"):
                raise ConfigError(f"{label}: expected critical, error, warning, info or debug")
            values[name] = v
        elif name == "host":
            v = value.strip()
            if not v:
                raise ConfigError(f"{label}: empty host")
            values[name] = v
        elif name == "tenants":
            values[name] = _tenants(label, value)
        elif name == "redis_url":
            try:
                values[name] = check_url(value.strip())
            except ValueError as exc:
                raise ConfigError(f"{label}: {exc}") from None
        elif name == "routes_file":
            v = value.strip()
            if not os.path.isfile(v):
                raise ConfigError(f"{label}: routing file {v!r} does not exist")
            values[name] = v
        else:
            values[name] = value.strip()
    provider = values.get("preferred_provider", "openai")
    big, small = DEFAULT_MODELS[str(provider)]
    values.setdefault("big_model", big)
    values.setdefault("small_model", small)
    return Settings(**values)  # type: ignore[arg-type]


