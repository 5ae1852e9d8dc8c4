"""The gRPC side: envoy.service.auth.v3.Authorization/Check and grpc.health.v1.

`Authorizer.Check` never raises: any fault becomes an explicit deny (500 api_error, fail closed) and is
counted. Allow decisions are logged at debug level only (one log line per allowed request would cost more than
the decision itself); denials are logged at info with the key fingerprint, never the key."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import keyrelay_tracing
from keyrelay_common.identity import TENANT_HEADER

from ._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from ._gen.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from .budgets import BUDGETED_ROUTE, DEFAULT_REFRESH_SECONDS, BudgetTracker
from .check_loop import CHECK_METHOD, DEFAULT_FAILURE_LIMIT, CheckLoop, CheckLoopError, LoopFaults
from .decide import budget_denial, decide, internal_error
from .decision_log import DecisionLog
from .extract import headers_from_header_map, headers_from_map
from .logs import request_id
from .metrics import Metrics
from .policy import Policy, PolicyError
from .policy_diff import LOOSENS, Change
from .reload import LOOSEN_QUIET_SECONDS, PolicyStore, PolicyWatcher
from .respond import build_response, deny_response
from .routes import DEFAULT_ROUTE, KNOWN_ROUTES, ROUTE_EXTENSION, route_of
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
        # Set only while the start-up self-check runs: a Check with this http.id (Envoy sets a numeric stream id
        # there, clients cannot) is answered but not counted or logged: it is not a request.
        self.quiet_id: str | None = None

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
            http = attributes.request.http
            route = route_of(attributes.context_extensions, http)
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
        if self.quiet_id is not None and http.id == self.quiet_id:
            return response
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
           "keyrelay.route": route_of(request.attributes.context_extensions, request.attributes.request.http)}
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
    # thread-pool handler (also the automatic fallback when the direct handler cannot attach, fails its
    # self-check, or fails at runtime).
    check_handler: str = "direct"
    # Calls in a row failing inside gRPC before the direct handler is given up (check_loop.py).
    direct_failure_limit: int = DEFAULT_FAILURE_LIMIT
    # Test-only fault injection into the direct handler (None in production).
    loop_faults: LoopFaults | None = None
    # Budgets (ext_authz/budgets.py): the counters' Redis (None: budgets of the policy follow on_redis_error)
    # and how often the local view is refreshed.
    redis_url: str | None = field(default=None, repr=False)
    budget_refresh_seconds: float = DEFAULT_REFRESH_SECONDS


# The self-check: one Check like Envoy sends for a probe (no key; a forged x-authz-* header to remove), answered
# by the direct loop over loopback and compared with the pool handler's answer for the same request. Not counted
# or logged as a decision (Authorizer.quiet_id).
SELF_CHECK_TIMEOUT_S = 5.0
SELF_CHECK_ID = "keyrelay-self-check"


def self_check_request() -> CheckRequest:
    request = CheckRequest()
    request.attributes.context_extensions[ROUTE_EXTENSION] = "health"
    http = request.attributes.request.http
    http.id = SELF_CHECK_ID
    http.method = "GET"
    http.path = "/readyz"
    http.host = "localhost"
    http.protocol = "HTTP/1.1"
    for name, value in ((":path", b"/readyz"), ("user-agent", b"keyrelay-self-check"), (TENANT_HEADER, b"x")):
        http.header_map.headers.add(key=name, raw_value=value)
    return request


def _port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (bound without SO_REUSEPORT, as a second server on the port would be)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return True  # let grpc report the bad address
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError:
                return False
    return True


class GrpcWorker:
    """One gRPC server plus the policy watcher, run until SIGTERM/SIGINT, then drained.

    grpc's synchronous server (C-core completion queue + a small thread pool) serves health and anything else;
    Check is answered by CheckLoop on the same server and port (see check_loop.py for why and what it costs).
    grpc.aio and grpclib were measured through Envoy too and cost more CPU per check than either.

    Falling back from the direct handler to the pool handler at runtime needs a second server on the same port
    while the first drains, so a server with the direct handler binds with SO_REUSEPORT; with one worker the port
    is first checked to be free without it, so a second ext_authz on the same port still fails to start."""

    def __init__(self, cfg: GrpcConfig, store: PolicyStore, metrics: Metrics, policy_path: str | None,
                 build: Callable[[bytes, str], Policy],
                 on_serving_change: Callable[[bool], None] | None = None) -> None:
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
        self.budgets = BudgetTracker(cfg.redis_url, lambda: self.store.policy.budgets, metrics,
                                     refresh_seconds=cfg.budget_refresh_seconds)
        self.authorizer = Authorizer(store, metrics, budgets=self.budgets)   # with tracing once started
        self._on_serving_change = on_serving_change
        self._probe_port = 0
        self._started = False
        self._switching = False
        self._switch_lock = threading.Lock()
        self._switch_thread: threading.Thread | None = None
        self._stop = threading.Event()

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
        direct = self.cfg.check_handler == "direct"
        if direct and not self.cfg.reuse_port and self.cfg.port and not _port_is_free(self.cfg.host, self.cfg.port):
            raise RuntimeError("address already in use")
        # Tracing (off unless OTEL_EXPORTER_OTLP_ENDPOINT is set) is set up here, once in each serving process.
        self.tracing = keyrelay_tracing.from_env("keyrelay-ext-authz", os.environ)
        self.budgets.start(self._stop)  # a first refresh before the first Check
        self.authorizer = Authorizer(self.store, self.metrics, tracing=self.tracing, budgets=self.budgets)
        try:
            self.server, self.check_loop, self.port = self._serve(direct, self.cfg.port)
        except CheckLoopError as exc:
            # The server already stopped again; serve with the public handler instead (same answers, slower).
            logging.getLogger("ext_authz").warning("direct Check handler did not start; using grpc's thread-pool "
                                                   "handler", extra={"problem": str(exc)})
            self.server, self.check_loop, self.port = self._serve(False, self.cfg.port)
        if self.check_loop is not None:
            problem = self._self_check()
            if problem:
                self._fall_back(f"self-check: {problem}", at_start=True)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.policy_live(self.store.policy.short_digest, self.store.policy.source)
        self._started = True
        return self.port

    def _serve(self, direct: bool, port: int) -> tuple[grpc.Server, CheckLoop | None, int]:
        """A started server on host:port with the direct handler (when `direct` and it attaches) or the pool one."""
        reuse = self.cfg.reuse_port or direct or self.check_loop is not None
        options = [("grpc.so_reuseport", 1 if reuse else 0),
                   ("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        server = grpc.server(ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="ext_authz-check"),
                             options=options)
        loop = CheckLoop.attach(server, self.authorizer.check_bytes, on_fault=self._on_loop_fault,
                                failure_limit=self.cfg.direct_failure_limit,
                                faults=self.cfg.loop_faults) if direct else None
        if loop is None:
            external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self.authorizer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        bound = server.add_insecure_port(join_hostport(self.cfg.host, port))  # RuntimeError if not
        if loop is not None:
            # A loopback port of this server alone for the self-check (with SO_REUSEPORT and several workers,
            # a connection to the shared port could reach another worker).
            try:
                self._probe_port = server.add_insecure_port("127.0.0.1:0")
            except RuntimeError:
                self._probe_port = 0
        server.start()
        if loop is not None:
            try:
                loop.start()
            except CheckLoopError:
                server.stop(0).wait()
                loop.stop(1.0)
                raise
        return server, loop, bound

    def _self_check(self) -> str:
        """One real Check through the direct loop over loopback, compared with the pool handler's answer for the
        same request; "" when they agree, else what went wrong."""
        loop = self.check_loop
        assert loop is not None
        if not self._probe_port:
            return "no loopback port for the self-check"
        raw = self_check_request().SerializeToString()
        answered_before = loop.answered
        self.authorizer.quiet_id = SELF_CHECK_ID
        try:
            with grpc.insecure_channel(f"127.0.0.1:{self._probe_port}") as channel:
                got = channel.unary_unary(CHECK_METHOD)(raw, timeout=SELF_CHECK_TIMEOUT_S)
            direct = CheckResponse.FromString(got)
            pool = self.authorizer.check(CheckRequest.FromString(raw))  # what the pool handler answers
        except grpc.RpcError as exc:
            return f"the Check failed ({exc.code()})"
        except Exception as exc:  # noqa: BLE001 - any failure means: do not use the direct loop
            return f"the Check failed ({exc.__class__.__name__})"
        finally:
            self.authorizer.quiet_id = None
        if loop.answered != answered_before + 1:
            return "the answer did not come from the direct loop"
        if direct != pool:
            return "its answer differs from the pool handler's"
        return ""

    def _on_loop_fault(self, reason: str) -> None:
        """Called once from the loop thread: switch handlers in another thread (the loop keeps serving)."""
        with self._switch_lock:
            if self._switching or self.draining:
                return
            self._switching = True
            self._switch_thread = threading.Thread(target=self._fall_back, args=(reason,),
                                                   name="ext_authz-fallback", daemon=True)
        self._switch_thread.start()

    def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)
        if self._on_serving_change is not None:
            self._on_serving_change(serving)

    def _fall_back(self, reason: str, at_start: bool = False) -> None:
        """Replace the direct handler by the pool handler without a gap: not ready, the pool server up on the same
        port (SO_REUSEPORT), the direct server drained (its in-flight calls answered), then ready again."""
        self._switching = True
        log = logging.getLogger("ext_authz")
        log.error("direct Check handler failed; switching to grpc's thread-pool handler",
                  extra={"problem": reason, "at_start": at_start})
        if not at_start:
            self._set_serving(False)
        old_server, old_loop = self.server, self.check_loop
        assert old_server is not None and old_loop is not None
        try:
            new_server, _, _ = self._serve(False, self.port)
        except Exception as exc:  # noqa: BLE001 - keep the direct handler serving what it can; stay not ready
            log.error("could not start grpc's thread-pool handler; staying on the direct handler, not ready",
                      extra={"error": f"{exc.__class__.__name__}: {exc}"})
            return
        self.server, self.check_loop = new_server, None
        old_loop.closing()
        old_server.stop(self.cfg.drain_seconds).wait()
        old_loop.stop()
        self._switching = False
        if not at_start and not self.draining:
            self._set_serving(True)

    @property
    def serving(self) -> bool:
        """Ready for checks: not draining or switching handlers, and the direct handler (when used) is healthy."""
        return (self._started and not self.draining and not self._switching
                and (self.check_loop is None or self.check_loop.healthy))

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
        self.stop()

    def stop(self) -> None:
        """Drain in-flight checks (grace: drain_seconds) and stop."""
        with self._switch_lock:
            self.draining = True
            switch = self._switch_thread
        logging.getLogger("ext_authz").info("stopping: draining in-flight checks",
                                            extra={"grace_seconds": self.cfg.drain_seconds})
        self.health.enter_graceful_shutdown()
        if switch is not None:  # a handler switch finishes first (it drains the old server)
            switch.join(self.cfg.drain_seconds + 5)
        assert self.server is not None
        loop = self.check_loop
        if loop is not None:
            loop.closing()
        self.server.stop(self.cfg.drain_seconds).wait()
        if loop is not None:  # after the server: its calls are finished by now
            loop.stop()
        self.tracing.shutdown()
        logging.getLogger("ext_authz").info("stopped")
