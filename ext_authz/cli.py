"""Console script `keyrelay-ext-authz` (the service). The policy tools (`keyrelay-policy`, `keyrelay-key-digest`)
are in policy_tool.py.

Flags win over environment variables. Bad configuration exits non-zero with one line on stderr. The ready line
on stdout is `ready: ext_authz grpc on <host:port> http on <host:port>` (docs/interfaces.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from keyrelay_budgets import REDIS_URL_ENV, check_url
from keyrelay_stack.version import add_version_flag

from .budgets import DEFAULT_REFRESH_SECONDS
from .policy import Policy, PolicyError, builtin_policy, load_policy, parse_policy
from .reload import LOOSEN_QUIET_SECONDS
from .settings import EnvOverrides, SettingsError, apply_overrides, env_overrides, join_hostport, parse_addr

PROG = "keyrelay-ext-authz"
log = logging.getLogger("ext_authz")


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


def initial_policy(cfg: Config) -> Policy:
    policy = load_policy(cfg.policy) if cfg.policy else builtin_policy()
    return apply_overrides(policy, cfg.overrides)


def policy_builder(overrides: EnvOverrides):
    def build(raw: bytes, source: str) -> Policy:
        return apply_overrides(parse_policy(raw, source), overrides)
    return build


def build_worker(cfg: Config, policy: Policy, port: int, *, reuse_port: bool, registry=None):
    """One gRPC worker serving `policy` (its metrics on `registry`, or a registry of its own), and its store."""
    from prometheus_client import CollectorRegistry

    from .metrics import Metrics
    from .reload import PolicyStore
    from .server import GrpcConfig, GrpcWorker

    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    metrics.reloads.labels("success").inc()
    store = PolicyStore(policy)
    worker = GrpcWorker(GrpcConfig(cfg.grpc_host, port, reuse_port=reuse_port, drain_seconds=cfg.drain_seconds,
                                   reload_interval=cfg.reload_interval, loosen_quiet_seconds=cfg.loosen_quiet_seconds,
                                   threads=cfg.threads,
                                   check_handler=cfg.check_handler, redis_url=cfg.redis_url,
                                   budget_refresh_seconds=cfg.budget_refresh_seconds),
                        store, metrics, cfg.policy, policy_builder(cfg.overrides))
    return worker, store


def start_http(cfg: Config, app):
    """The HTTP side (metrics, probes) started on the configured address; a bind failure is a SettingsError."""
    from .httpd import HttpSide

    try:
        return HttpSide(cfg.http_host, cfg.http_port, app).start()
    except OSError as exc:
        raise SettingsError(f"cannot bind HTTP address {cfg.http_host}:{cfg.http_port}: {exc.strerror}") from None


def ready_line(grpc_host: str, grpc_port: int, http_host: str, http_port: int) -> str:
    return (f"ready: ext_authz grpc on {join_hostport(grpc_host, grpc_port)} "
            f"http on {join_hostport(http_host, http_port)}")


def run_single(cfg: Config, policy: Policy) -> int:
    from prometheus_client import CollectorRegistry

    from .httpd import make_app

    registry = CollectorRegistry()
    worker, store = build_worker(cfg, policy, cfg.grpc_port, reuse_port=False, registry=registry)

    def ready():
        info = {"policy": store.policy.source, "digest": store.policy.short_digest}
        return (worker.serving, info)

    http = start_http(cfg, make_app(registry, ready))
    try:
        try:
            port = worker.start()
        except (OSError, RuntimeError) as exc:
            raise SettingsError(f"cannot bind gRPC address {cfg.grpc_host}:{cfg.grpc_port}: {exc}") from None
        log.info("serving", extra={"grpc": f"{cfg.grpc_host}:{port}", "http": f"{cfg.http_host}:{http.port}",
                                   "policy": policy.source, "digest": policy.short_digest, "workers": 1,
                                   "check_handler": worker.check_handler,
                                   "passthrough": policy.default.passthrough,
                                   "require_key": policy.default.require_key})
        print(ready_line(cfg.grpc_host, port, cfg.http_host, http.port), flush=True)
        worker.run_until_stopped()
    finally:
        http.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import logs

    try:
        cfg = resolve_config(argv, os.environ)
        logs.setup(cfg.log_level)
        policy = initial_policy(cfg)
    except (SettingsError, PolicyError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        if cfg.workers > 1:
            from .workers import run_workers
            return run_workers(cfg, policy)
        return run_single(cfg, policy)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
