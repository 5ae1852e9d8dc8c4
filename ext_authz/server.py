"""The gRPC side: envoy.service.auth.v3.Authorization/Check and grpc.health.v1.

`Authorizer.Check` never raises: any fault becomes an explicit deny (500 api_error, fail closed) and is
counted. Allow decisions are logged at debug level only (one log line per allowed request would cost more than
the decision itself); denials are logged at info with the key fingerprint, never the key."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import keyrelay_tracing

from ._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from ._gen.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from .budgets import BUDGETED_ROUTE, DEFAULT_REFRESH_SECONDS, BudgetTracker
from .check_loop import CheckLoop, CheckLoopError
from .decide import budget_denial, decide, internal_error
from .decision_log import DecisionLog
from .extract import headers_from_header_map, headers_from_map, route_of
from .logs import request_id
from .metrics import Metrics
from .policy import DEFAULT_ROUTE, KNOWN_ROUTES, Policy, PolicyError
from .policy_diff import LOOSENS, Change
from .reload import LOOSEN_QUIET_SECONDS, PolicyStore, PolicyWatcher
from .respond import build_response, deny_response
from .settings import join_hostport

log = logging.getLogger("ext_authz.check")
SERVICE_NAME = "envoy.service.auth.v3.Authorization"


class Authorizer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, store: PolicyStore, metrics: Metrics, decision_log: DecisionLog | None = None,
                 tracing: keyrelay_tracing.Tracing = keyrelay_tracing.DISABLED,
                 budgets: BudgetTracker | None = None) -> None:
        self.store = store
        self.budgets = budgets
        self.metrics = metrics
        self.decision_log = decision_log or DecisionLog()
        self.tracing = tracing
        self._observe = metrics.check_seconds.observe
        self._debug = log.isEnabledFor(logging.DEBUG)

    def _route_label(self, route: str, policy: Policy) -> str:
        return route if route in KNOWN_ROUTES or route in policy.routes else "other"

    def check(self, request) -> object:
        """Synchronous core of Check (also used by tests without a network)."""
        start = time.perf_counter()
        route = DEFAULT_ROUTE
        policy = self.store.policy
        http = None
        try:
            attributes = request.attributes
            route = route_of(attributes.context_extensions)
            http = attributes.request.http
            if http.HasField("header_map"):
                headers = headers_from_header_map(http.header_map.headers)
            else:
                headers = headers_from_map(http.headers)
            decision = decide(policy, route, headers)
            budget_dry = ""
            if decision.allowed and policy.budgets is not None and route == BUDGETED_ROUTE \
                    and self.budgets is not None:
                deny, dry = self.budgets.check(policy.budgets, decision.tenant, decision.key_id,
                                               request_id(http) if policy.budgets.concurrent else "")
                budget_dry = dry.reason
                if deny.reason:
                    decision = budget_denial(decision, deny.reason, deny.retry_after)
            response = build_response(decision, headers.authz_headers)
        except Exception:
            return self._fail_closed(route, start, http, policy)
        label = self._route_label(route, policy)
        # Dry-run rules and the decision log: one attribute test each when the policy has none.
        dry_run = self._dry_run(policy, route, label, headers, http, decision) \
            if decision.allowed and policy.shadow is not None else ""
        if budget_dry:
            self.metrics.dry_run_denial(budget_dry, label)
            log.info("dry-run deny", extra={"reason": budget_dry, "status": 429, "route": route,
                                            "key_id": decision.key_id, "tenant": decision.tenant,
                                            "request_id": request_id(http)})
            dry_run = dry_run or budget_dry
        if decision.allowed:
            self.metrics.decision("allow", decision.reason, label)
            if self._debug:
                log.debug("allow", extra={"reason": decision.reason, "route": route, "key_id": decision.key_id,
                                          "tenant": decision.tenant, "credential": decision.credential,
                                          "request_id": request_id(http)})
        else:
            self.metrics.decision("deny", decision.reason, label)
            log.info("deny", extra={"reason": decision.reason, "status": decision.status, "route": route,
                                    "key_id": decision.key_id, "request_id": request_id(http),
                                    **({"tenant": decision.tenant, "retry_after": decision.retry_after}
                                       if decision.retry_after else {})})
        if policy.decision_log is not None:
            self._log_decision(policy, decision, "allow" if decision.allowed else "deny", http, dry_run)
        self._observe(time.perf_counter() - start)
        return response

    def _dry_run(self, policy: Policy, route: str, label: str, headers, http, decision) -> str:
        """Evaluate the dry-run rules for an allowed request: a would-be denial is logged and counted, the
        request stays allowed. Returns the would-be reason, or ""."""
        try:
            shadow = decide(policy.shadow, route, headers)
            if shadow.allowed:
                return ""
            self.metrics.dry_run_denial(shadow.reason, label)
            log.info("dry-run deny", extra={"reason": shadow.reason, "status": shadow.status, "route": route,
                                            "key_id": shadow.key_id or decision.key_id,
                                            "request_id": request_id(http)})
            return shadow.reason
        except Exception:  # a dry run never changes the answer
            log.error("dry-run evaluation failed", exc_info=True, extra={"route": route})
            return ""

    def _log_decision(self, policy: Policy, decision, result: str, http, dry_run: str) -> None:
        try:
            self.decision_log.write(policy.decision_log, decision, result, policy.short_digest,
                                    request_id(http) if http is not None else "", dry_run)
        except Exception:  # the log never changes the answer
            log.error("decision log failed", exc_info=True)

    def _fail_closed(self, route: str, start: float, http=None, policy: Policy | None = None):
        """An explicit deny for a fault on the decision path; nothing here depends on the policy or the request."""
        if not isinstance(route, str) or route not in KNOWN_ROUTES:
            route = "other"
        decision = internal_error(route)
        try:
            self.metrics.internal_errors.inc()
            self.metrics.decision("error", "internal_error", route)
            self._observe(time.perf_counter() - start)
            rid = _safe_request_id(http)
            log.error("check failed; denied (fail closed)", exc_info=True, extra={"route": route, "request_id": rid})
            if policy is not None and policy.decision_log is not None:
                self._log_decision(policy, decision, "error", http if rid else None, "")
        except Exception:  # metrics or logging broke too: still answer with the deny
            pass
        return deny_response(decision)

    def Check(self, request, context):  # noqa: N802 - gRPC method name
        if self.tracing.enabled:
            return self.traced_check(request, context.invocation_metadata())
        return self.check(request)

    def check_bytes(self, raw: bytes, metadata=()) -> bytes:
        """Serialized CheckRequest in, serialized CheckResponse out (the direct handler's entry; `metadata` is
        the call's gRPC metadata). A request that does not decode raises, and the caller answers gRPC INTERNAL
        (Envoy: status_on_error, fail closed)."""
        request = CheckRequest.FromString(raw)
        if self.tracing.enabled:
            return self.traced_check(request, metadata).SerializeToString()
        return self.check(request).SerializeToString()

    def traced_check(self, request, metadata) -> object:
        """`check` inside a span continuing the W3C context Envoy sends in the Check's gRPC metadata (its
        ext_authz client span is the parent). Attributes: route, decision, deny reason and status, Envoy's
        request id; never a key or a credential header."""
        try:
            carrier = {k: v for k, v in (metadata or ()) if k in keyrelay_tracing.TRACE_HEADERS}
            span = self.tracing.start("envoy.service.auth.v3.Authorization/Check", parent_headers=carrier,
                                      attributes={"rpc.system": "grpc", "rpc.service": SERVICE_NAME,
                                                  "rpc.method": "Check"})
        except Exception:  # noqa: BLE001 - tracing never changes or blocks a decision
            return self.check(request)
        try:
            response = self.check(request)
            try:
                span.set_attributes(_check_attributes(request, response))
            except Exception:  # noqa: BLE001 - attributes are best effort; the decision stands
                pass
            return response
        finally:
            span.end()


def _check_attributes(request, response) -> dict:
    """Span attributes of one Check: route, decision, deny status and reason, Envoy's request id (never a key or
    a credential header)."""
    out = {"keyrelay.request_id": request_id(request.attributes.request.http),
           "keyrelay.route": route_of(request.attributes.context_extensions)}
    if response.HasField("denied_response"):
        out["keyrelay.decision"] = "deny"
        out["http.response.status_code"] = int(response.denied_response.status.code)
        fields = response.dynamic_metadata.fields
        if "reason" in fields:
            out["keyrelay.reason"] = fields["reason"].string_value
    else:
        out["keyrelay.decision"] = "allow"
    return out


def _safe_request_id(http) -> str:
    try:
        return request_id(http) if http is not None else ""
    except Exception:  # the request itself may be what failed
        return ""


@dataclass
class GrpcConfig:
    host: str
    port: int
    reuse_port: bool = False
    drain_seconds: float = 5.0
    reload_interval: float = 1.0
    loosen_quiet_seconds: float = LOOSEN_QUIET_SECONDS
    threads: int = 4
    # "direct": Check answered by CheckLoop straight off the completion queue; "pool": grpc's public
    # thread-pool handler (also the automatic fallback when the direct handler cannot attach).
    check_handler: str = "direct"
    # Budgets (ext_authz/budgets.py): the counters' Redis (None: budgets of the policy follow on_redis_error)
    # and how often the local view is refreshed.
    redis_url: str | None = field(default=None, repr=False)
    budget_refresh_seconds: float = DEFAULT_REFRESH_SECONDS


class GrpcWorker:
    """One gRPC server plus the policy watcher, run until SIGTERM/SIGINT, then drained.

    grpc's synchronous server (C-core completion queue + a small thread pool) serves health and anything else;
    Check is answered by CheckLoop on the same server and port (see check_loop.py for why and what it costs).
    grpc.aio and grpclib were measured through Envoy too and cost more CPU per check than either."""

    def __init__(self, cfg: GrpcConfig, store: PolicyStore, metrics: Metrics, policy_path: str | None,
                 build: Callable[[bytes, str], Policy]) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.policy_path = policy_path
        self.build = build
        self.port = 0
        self.draining = False
        self.server: grpc.Server | None = None
        self.health = health.HealthServicer()
        self.check_loop: CheckLoop | None = None
        self.tracing = keyrelay_tracing.DISABLED
        self._started = False
        self._stop = threading.Event()
        self.budgets = BudgetTracker(cfg.redis_url, lambda: self.store.policy.budgets, metrics,
                                     refresh_seconds=cfg.budget_refresh_seconds)

    def _on_reload(self, policy: Policy) -> None:
        self.metrics.reloads.labels("success").inc()
        self.metrics.policy_live(policy.short_digest, policy.source)
        logging.getLogger("ext_authz.reload").info(
            "policy reloaded", extra={"policy": policy.source, "digest": policy.short_digest})

    def _on_pending(self, policy: Policy, changes: list[Change], quiet_seconds: float) -> None:
        loosening = [c.what for c in changes if c.effect == LOOSENS]
        logging.getLogger("ext_authz.reload").warning(
            "policy change loosens the policy; applied once the file stays unchanged",
            extra={"policy": policy.source, "digest": policy.short_digest, "quiet_seconds": quiet_seconds,
                   "loosens": loosening[:20], "live_digest": self.store.policy.short_digest})

    def _on_error(self, error: PolicyError) -> None:
        self.metrics.reloads.labels("error").inc()
        self.metrics.reload_errors.inc()
        logging.getLogger("ext_authz.reload").error(
            "invalid policy; keeping the last good one", extra={"problem": str(error),
                                                                "live_digest": self.store.policy.short_digest})

    def start(self) -> int:
        # Signal handlers first: a SIGTERM right after the ready line must already drain, not kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.request_stop())
        # Tracing (off unless OTEL_EXPORTER_OTLP_ENDPOINT is set) is set up here, once in each serving process.
        self.tracing = keyrelay_tracing.from_env("keyrelay-ext-authz", os.environ)
        self.budgets.start(self._stop)  # a first refresh before the first Check
        try:
            self._serve(direct=self.cfg.check_handler == "direct")
        except CheckLoopError as exc:
            # The server already stopped again; serve with the public handler instead (same answers, slower).
            logging.getLogger("ext_authz").warning("direct Check handler did not start; using grpc's thread-pool "
                                                   "handler", extra={"problem": str(exc)})
            self._serve(direct=False)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.policy_live(self.store.policy.short_digest, self.store.policy.source)
        self._started = True
        return self.port

    def _serve(self, direct: bool) -> None:
        options = [("grpc.so_reuseport", 1 if self.cfg.reuse_port else 0),
                   ("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        self.server = grpc.server(ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="ext_authz-check"),
                                  options=options)
        authorizer = Authorizer(self.store, self.metrics, tracing=self.tracing, budgets=self.budgets)
        self.check_loop = CheckLoop.attach(self.server, authorizer.check_bytes) if direct \
            else None
        if self.check_loop is None:
            external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authorizer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(join_hostport(self.cfg.host, self.cfg.port))  # RuntimeError if not
        self.server.start()
        if self.check_loop is not None:
            try:
                self.check_loop.start()
            except CheckLoopError:
                self.server.stop(0).wait()
                self.check_loop.stop(1.0)
                self.check_loop = None
                raise

    @property
    def serving(self) -> bool:
        """Ready for checks: not draining, and the direct handler (when used) is running."""
        return self._started and not self.draining and (self.check_loop is None or self.check_loop.alive)

    @property
    def check_handler(self) -> str:
        """The handler actually answering Check: "direct" or "pool" (also when "direct" could not attach)."""
        return "direct" if self.check_loop is not None else "pool"

    def request_stop(self) -> None:
        self._stop.set()

    def run_until_stopped(self) -> None:
        if self.policy_path:
            watcher = PolicyWatcher(self.policy_path, self.store, self.build, self._on_reload, self._on_error,
                                    loosen_quiet_seconds=self.cfg.loosen_quiet_seconds, on_pending=self._on_pending)
            watcher.start_thread(self.cfg.reload_interval, self._stop)
        while not self._stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
        self.draining = True
        logging.getLogger("ext_authz").info("stopping: draining in-flight checks",
                                            extra={"grace_seconds": self.cfg.drain_seconds})
        self.health.enter_graceful_shutdown()
        assert self.server is not None
        self.server.stop(self.cfg.drain_seconds).wait()
        if self.check_loop is not None:  # after the server: its calls are finished by now
            self.check_loop.stop()
        self.tracing.shutdown()
        logging.getLogger("ext_authz").info("stopped")
