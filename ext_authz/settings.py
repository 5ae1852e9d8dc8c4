"""Process settings in one place: the `Config` type and its one loader (flags, then environment variables, then
defaults), and the seed's PASSTHROUGH_API_KEY / REQUIRE_PASSTHROUGH_KEY mapped onto the policy. Pure functions of
(argv, environ); the CLI turns SettingsError into a one-line exit."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from keyrelay_budgets import REDIS_URL_ENV, check_url

from keyrelay_common.settings import parse_bool as _parse_bool
from keyrelay_stack.version import add_version_flag

from .budgets import DEFAULT_REFRESH_SECONDS
from .policy import Policy, PolicyError, with_defaults
from .reload import LOOSEN_QUIET_SECONDS

if TYPE_CHECKING:  # not imported at run time: check_loop imports grpc
    from .check_loop import LoopFaults

PROG = "keyrelay-ext-authz"


class SettingsError(ValueError):
    """Bad configuration; str() is the one-line reason."""


@dataclass(frozen=True, slots=True)
class EnvOverrides:
    """PASSTHROUGH_API_KEY / REQUIRE_PASSTHROUGH_KEY as found in the environment (None: not set)."""

    passthrough: bool | None = None
    require_key: bool | None = None


def parse_bool(name: str, value: str) -> bool:
    return _parse_bool(name, value, SettingsError)


def env_overrides(environ: Mapping[str, str]) -> EnvOverrides:
    values = {}
    for name, attr in (("PASSTHROUGH_API_KEY", "passthrough"), ("REQUIRE_PASSTHROUGH_KEY", "require_key")):
        raw = environ.get(name)
        # An empty value counts as unset (a common way to blank a variable in manifests).
        if raw is not None and raw.strip():
            values[attr] = parse_bool(name, raw)
    return EnvOverrides(**values)


def apply_overrides(policy: Policy, overrides: EnvOverrides) -> Policy:
    """Environment variables override the file's top-level defaults; per-route fields the file pins stay.

    REQUIRE_PASSTHROUGH_KEY=true means "require the key that is passed through", so it needs passthrough on."""
    changes = {}
    if overrides.passthrough is not None:
        changes["passthrough"] = overrides.passthrough
    if overrides.require_key is not None:
        changes["require_key"] = overrides.require_key
    result = with_defaults(policy, **changes) if changes else policy
    if overrides.require_key and not result.default.passthrough:
        origin = "PASSTHROUGH_API_KEY=false" if overrides.passthrough is False else f"passthrough: false in {policy.source}"
        raise PolicyError(policy.source if overrides.passthrough is not False else "environment", None,
                          f"REQUIRE_PASSTHROUGH_KEY=true needs passthrough on, but {origin}")
    return result


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_addr(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9000
    http_host: str = "127.0.0.1"
    http_port: int = 9090
    policy: str | None = None
    workers: int = 1
    log_level: str = "info"
    reload_interval: float = 1.0
    loosen_quiet_seconds: float = LOOSEN_QUIET_SECONDS
    drain_seconds: float = 5.0
    threads: int = 4
    check_handler: str = "direct"
    overrides: EnvOverrides = EnvOverrides()
    # Test-only fault injection into the direct handler (check_loop.LoopFaults); no flag or variable sets it.
    loop_faults: LoopFaults | None = None
    # Budgets (budgets.py): the counters' Redis (never shown with its password) and the refresh interval.
    redis_url: str | None = field(default=None, repr=False)
    budget_refresh_seconds: float = DEFAULT_REFRESH_SECONDS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise SettingsError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Envoy ext_authz gRPC service that enforces keyrelay's key policy.")
    p.add_argument("--grpc-addr", help="gRPC listen address host:port (EXT_AUTHZ_GRPC_ADDR; default 127.0.0.1:9000)")
    p.add_argument("--http-addr", help="metrics/health address host:port (EXT_AUTHZ_HTTP_ADDR; default 127.0.0.1:9090)")
    p.add_argument("--policy", help="policy YAML file, hot-reloaded (EXT_AUTHZ_POLICY; default: built-in policy)")
    p.add_argument("--workers", help="worker processes sharing the gRPC port via SO_REUSEPORT "
                                     "(EXT_AUTHZ_WORKERS; default 1)")
    p.add_argument("--threads", help="threads answering checks in each worker process (EXT_AUTHZ_THREADS; "
                                     "default 4)")
    p.add_argument("--check-handler", help="direct (Check answered straight off gRPC's completion queue) or pool "
                                           "(grpc's thread-pool handler) (EXT_AUTHZ_CHECK_HANDLER; default direct)")
    p.add_argument("--log-level", help="debug, info, warning, error (EXT_AUTHZ_LOG_LEVEL; default info)")
    p.add_argument("--reload-interval", help="seconds between policy file checks (EXT_AUTHZ_RELOAD_INTERVAL; "
                                             "default 1)")
    p.add_argument("--loosen-quiet-seconds", help="a policy change that loosens the policy is applied only after "
                                                  "the file stayed unchanged this long; tightening applies at once "
                                                  "(EXT_AUTHZ_LOOSEN_QUIET_SECONDS; default 5)")
    p.add_argument("--drain-seconds", help="grace period for in-flight checks on SIGTERM (EXT_AUTHZ_DRAIN_SECONDS; "
                                           "default 5)")
    p.add_argument("--redis-url", help="Redis holding the budget counters, redis://[:password@]host:port/db "
                                       "(KEYRELAY_REDIS_URL; default: none, budgets follow on_redis_error)")
    p.add_argument("--budget-refresh-seconds", help="seconds between refreshes of the local budget counters "
                                                    "from Redis (KEYRELAY_BUDGET_REFRESH_SECONDS; default 0.25)")
    return add_version_flag(p)


def _pick(flag: str | None, environ: Mapping[str, str], env_name: str) -> str | None:
    if flag is not None:
        return flag
    value = environ.get(env_name)
    return value if value not in (None, "") else None


def _number(name: str, value: str | None, default: float, kind: type, low: float, high: float):
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return number


def resolve_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Config:
    args = build_parser().parse_args(argv)
    grpc_host, grpc_port = parse_addr("--grpc-addr", _pick(args.grpc_addr, environ, "EXT_AUTHZ_GRPC_ADDR")
                                      or "127.0.0.1:9000")
    http_host, http_port = parse_addr("--http-addr", _pick(args.http_addr, environ, "EXT_AUTHZ_HTTP_ADDR")
                                      or "127.0.0.1:9090")
    level = (_pick(args.log_level, environ, "EXT_AUTHZ_LOG_LEVEL") or "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"--log-level must be debug, info, warning or error, got {level!r}")
    handler = (_pick(args.check_handler, environ, "EXT_AUTHZ_CHECK_HANDLER") or "direct").lower()
    if handler not in ("direct", "pool"):
        raise SettingsError(f"--check-handler must be direct or pool, got {handler!r}")
    return Config(
        grpc_host=grpc_host, grpc_port=grpc_port, http_host=http_host, http_port=http_port,
        policy=_pick(args.policy, environ, "EXT_AUTHZ_POLICY"),
        workers=_number("--workers", _pick(args.workers, environ, "EXT_AUTHZ_WORKERS"), 1, int, 1, 64),
        log_level=level,
        threads=_number("--threads", _pick(args.threads, environ, "EXT_AUTHZ_THREADS"), 4, int, 1, 256),
        check_handler=handler,
        reload_interval=_number("--reload-interval", _pick(args.reload_interval, environ,
                                                           "EXT_AUTHZ_RELOAD_INTERVAL"), 1.0, float, 0.05, 3600),
        loosen_quiet_seconds=_number("--loosen-quiet-seconds", _pick(args.loosen_quiet_seconds, environ,
                                                                     "EXT_AUTHZ_LOOSEN_QUIET_SECONDS"),
                                     LOOSEN_QUIET_SECONDS, float, 0, 3600),
        drain_seconds=_number("--drain-seconds", _pick(args.drain_seconds, environ, "EXT_AUTHZ_DRAIN_SECONDS"),
                              5.0, float, 0, 600),
        overrides=env_overrides(environ),
        redis_url=_redis_url(_pick(args.redis_url, environ, REDIS_URL_ENV)),
        budget_refresh_seconds=_number("--budget-refresh-seconds", _pick(args.budget_refresh_seconds, environ,
                                                                         "KEYRELAY_BUDGET_REFRESH_SECONDS"),
                                       DEFAULT_REFRESH_SECONDS, float, 0.01, 10),
    )


def _redis_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_url(value)
    except ValueError as exc:
        raise SettingsError(f"--redis-url: {exc}") from None
