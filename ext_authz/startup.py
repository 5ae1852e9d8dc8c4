"""Start-up: build a gRPC worker, start the HTTP side, run a single process. Imported by the CLI (one process) and
by the worker supervisor (workers.py, one worker per process); neither imports the other."""

from __future__ import annotations

import logging

from .policy import Policy, builtin_policy, load_policy, parse_policy
from .settings import Config, EnvOverrides, SettingsError, apply_overrides, join_hostport

log = logging.getLogger("ext_authz")


def initial_policy(cfg: Config) -> Policy:
    policy = load_policy(cfg.policy) if cfg.policy else builtin_policy()
    return apply_overrides(policy, cfg.overrides)


def policy_builder(overrides: EnvOverrides):
    def build(raw: bytes, source: str) -> Policy:
        return apply_overrides(parse_policy(raw, source), overrides)
    return build


def build_worker(cfg: Config, policy: Policy, port: int, *, reuse_port: bool, registry=None,
                 on_serving_change=None):
    """One gRPC worker serving `policy` (its metrics on `registry`, or a registry of its own), and its store.
    `on_serving_change(bool)` is told when the worker stops or resumes serving checks after it started."""
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
                                   check_handler=cfg.check_handler, loop_faults=cfg.loop_faults,
                                   redis_url=cfg.redis_url, budget_refresh_seconds=cfg.budget_refresh_seconds),
                        store, metrics, cfg.policy, policy_builder(cfg.overrides), on_serving_change)
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
