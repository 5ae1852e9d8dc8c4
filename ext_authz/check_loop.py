"""The hot path: `Authorization/Check` served straight off a gRPC completion queue by one thread.

Why not the public `grpc.server` handler for Check: grpcio's synchronous server hands every RPC from its polling
thread to a thread pool and back through condition variables (four completion-queue events, two thread switches
and a lock handshake per RPC, all under the GIL). Measured through Envoy on the 2-core bench machine that costs
about 165 µs of CPU per check, while our own decision is about 18 µs. This loop asks gRPC's C core for Check calls
itself (a *registered method* on the same server, with a completion queue of its own) and answers each one
inline: receive the message, decide, send metadata + message + status in one batch. Measured on the same bench:
about 65 µs of CPU per check and 1.7x the throughput. grpc.aio and grpclib were measured too and were slower
than the synchronous server (see docs/ext_authz.md).

Everything else on the port (grpc.health.v1, reflection, unknown methods) stays with the public server, which
also owns start, graceful shutdown and cancellation: this module only adds one registered method.

This uses grpcio's Cython layer (`grpc._cython.cygrpc`) and the server's C object, which are not public API
(pyproject.toml pins grpcio to the minor versions this was tested with). Three guards, each falling back to the
public handler (same answers, slower; `--check-handler pool` forces it):
- `attach` checks for everything it needs and returns None when something is missing; `start` raises
  CheckLoopError when the core refuses a request;
- before the ready line the worker answers one real Check through this loop over loopback and compares it with
  the pool handler's answer for the same request (server.py, `GrpcWorker._self_check`);
- at runtime the loop reports a fault (once, through `on_fault`) when `failure_limit` calls in a row fail inside
  gRPC (receiving or sending, not a request that does not decode) or when a requested call slot is lost (not
  re-armed, or completed without a call while serving); the worker then reports not ready, starts the public
  handler on the same port and drains this one (server.py, `GrpcWorker._fall_back`).
`LoopFaults` injects those failures at the gRPC boundary for the tests; production passes none.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import grpc

log = logging.getLogger("ext_authz.check_loop")

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
# Calls requested from the C core ahead of time: Envoy multiplexes many checks on one HTTP/2 connection, and a
# call that arrives while none is requested waits in the core's queue until the loop asks for one.
OUTSTANDING_CALLS = 64

_REQUEST = object()   # tag of a requested call
_SENT = object()      # tag of a finished send batch
_CLOSED = object()    # tag of a receive-close batch


# Calls in a row that fail inside gRPC before the loop reports a fault (GrpcConfig.direct_failure_limit).
DEFAULT_FAILURE_LIMIT = 3


class CheckLoopError(RuntimeError):
    """The loop could not start (grpcio's internals are not what this module expects)."""


class InjectedFault(RuntimeError):
    """Raised where LoopFaults asks for a failure (tests only)."""


@dataclass(frozen=True)
class LoopFaults:
    """Failures injected at the gRPC boundary, for tests; configuration passed in (GrpcConfig.loop_faults).
    Call numbers count from 1."""

    corrupt_answers: bool = False        # send an empty CheckResponse instead of the handler's answer
    fail_sends_from: int | None = None   # from this answer on, sending it raises (as a changed grpcio could)
    fail_rearm_at: int | None = None     # re-requesting the slot of this call raises (one slot is lost)


class CheckLoop:
    """Serves CHECK_METHOD on `server` with `handle(request_bytes, metadata) -> response_bytes` (`metadata`: the
    call's gRPC invocation metadata as (key, value) pairs).

    `handle` must never raise for a well-formed request (Authorizer.check turns faults into an explicit deny);
    a request that cannot be decoded or any other fault here ends the call with gRPC INTERNAL, which Envoy treats
    as an authorization failure (status_on_error, fail closed)."""

    def __init__(self, cygrpc, core_server, handle: Callable[[bytes, tuple], bytes], threads: int = 1, *,
                 on_fault: Callable[[str], None] | None = None, failure_limit: int = DEFAULT_FAILURE_LIMIT,
                 faults: LoopFaults | None = None) -> None:
        self._c = cygrpc
        self._server = core_server
        self._handle = handle
        self._threads_wanted = max(1, threads)
        self._cq = cygrpc.CompletionQueue()
        self._threads: list[threading.Thread] = []
        self._accepting = True
        self._on_fault = on_fault
        self._failure_limit = max(1, failure_limit)
        self._faults = faults or LoopFaults()
        self._lock = threading.Lock()
        self._failures_in_a_row = 0
        self._armed = 0          # call slots requested from the core and not yet completed
        self.calls = 0           # Check calls taken
        self.answered = 0        # Check calls answered with the handler's response
        self.fault: str | None = None   # the first fault reported (the loop keeps serving what it can)
        core_server.register_completion_queue(self._cq)
        core_server.register_method(CHECK_METHOD)

    @classmethod
    def attach(cls, server: grpc.Server, handle: Callable[[bytes, tuple], bytes], threads: int = 1,
               **options) -> "CheckLoop | None":
        """Register the loop on a not yet started `grpc.server`; None when grpcio's internals are not as expected.
        `options` go to the constructor (on_fault, failure_limit, faults)."""
        try:
            from grpc._cython import cygrpc
            core_server = server._cy_server  # noqa: SLF001 - see the module docstring
            needed = (cygrpc.CompletionQueue, cygrpc.ReceiveMessageOperation, cygrpc.ReceiveCloseOnServerOperation,
                      cygrpc.SendInitialMetadataOperation, cygrpc.SendMessageOperation,
                      cygrpc.SendStatusFromServerOperation, cygrpc.StatusCode.ok, cygrpc.StatusCode.internal,
                      cygrpc.CompletionType.queue_shutdown, cygrpc.RequestCallEvent.invocation_metadata,
                      core_server.register_method,
                      core_server.register_completion_queue, core_server.request_registered_call)
            del needed
            return cls(cygrpc, core_server, handle, threads, **options)
        except Exception as exc:  # noqa: BLE001 - any mismatch: use the public handler instead
            log.warning("direct Check handler unavailable; using grpc's thread-pool handler",
                        extra={"problem": f"{exc.__class__.__name__}: {exc}"})
            return None

    def start(self) -> None:
        """Call after the server started. Raises CheckLoopError when grpcio refuses what it is asked."""
        try:
            for _ in range(OUTSTANDING_CALLS):
                self._server.request_registered_call(self._cq, self._cq, CHECK_METHOD, _REQUEST)
                self._armed += 1
        except Exception as exc:  # noqa: BLE001 - any mismatch: the caller falls back to the public handler
            raise CheckLoopError(f"{exc.__class__.__name__}: {exc}") from None
        for n in range(self._threads_wanted):
            t = threading.Thread(target=self._run, name=f"ext_authz-check-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def alive(self) -> bool:
        """Every loop thread is running (readiness: a dead loop would leave Check calls unanswered)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    @property
    def healthy(self) -> bool:
        """Running and no fault reported."""
        return self.alive and self.fault is None

    def closing(self) -> None:
        """Call before the server stops: slots it cancels from now on are not lost, and none is re-armed."""
        self._accepting = False

    def _report(self, reason: str) -> None:
        with self._lock:
            if self.fault is not None:
                return
            self.fault = reason
        if self._on_fault is not None:
            try:
                self._on_fault(reason)
            except Exception:  # noqa: BLE001 - the callback must not take the loop down
                log.exception("fault callback failed")

    def _grpc_failure(self, exc: Exception) -> None:
        """A failure inside gRPC (not in the handler): counted; `failure_limit` in a row is a fault."""
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self._failure_limit:
            self._report(f"{self._failures_in_a_row} Check calls in a row failed inside gRPC "
                         f"({exc.__class__.__name__})")

    def _rearm(self) -> None:
        """Request a new call slot for the one just used; a slot that cannot be requested is lost."""
        try:
            if self.calls == self._faults.fail_rearm_at:
                raise InjectedFault("re-request refused")
            self._server.request_registered_call(self._cq, self._cq, CHECK_METHOD, _REQUEST)
            self._armed += 1
        except Exception as exc:  # noqa: BLE001 - keep serving the other slots; the worker switches handlers
            self._report(f"a call slot was not re-armed ({exc.__class__.__name__}); "
                         f"{OUTSTANDING_CALLS - self._armed} of {OUTSTANDING_CALLS} lost")

    def stop(self, timeout: float = 5.0) -> None:
        """Call after the server has shut down (its calls are finished): drain the queue and end the threads."""
        self._accepting = False
        self._cq.shutdown()
        if not self._threads:  # never started: drain the queue here (a queue is destroyed empty)
            self._run()
        for t in self._threads:
            t.join(timeout)

    def _run(self) -> None:
        c = self._c
        cq = self._cq
        server = self._server
        handle = self._handle
        recv_message = c.ReceiveMessageOperation
        recv_close = c.ReceiveCloseOnServerOperation
        send_metadata = c.SendInitialMetadataOperation
        send_message = c.SendMessageOperation
        send_status = c.SendStatusFromServerOperation
        ok = c.StatusCode.ok
        shutdown = c.CompletionType.queue_shutdown
        while True:
            event = cq.poll()
            if event.completion_type == shutdown:
                return
            tag = event.tag
            if tag is _SENT or tag is _CLOSED:
                continue
            if tag is _REQUEST:
                self._armed -= 1
                if not event.success:
                    # Normal while the server shuts down; while serving, the slot is gone.
                    if self._accepting:
                        self._report("a requested call slot completed without a call")
                    continue
                self.calls += 1
                if self._accepting:
                    self._rearm()
                try:
                    call = event.call
                    # Receive-close completes when the call ends (or is cancelled); nothing to do then.
                    call.start_server_batch((recv_close(0),), _CLOSED)
                    # The message's tag carries the call and its gRPC metadata (W3C trace context from Envoy).
                    call.start_server_batch((recv_message(0),), (call, event.invocation_metadata))
                except Exception as exc:  # noqa: BLE001 - keep serving the other calls
                    log.error("could not start a check call", extra={"error": exc.__class__.__name__})
                    self._grpc_failure(exc)
                continue
            # A received message: the tag is its call and the call's metadata.
            call, metadata = tag
            if not event.success:   # cancelled before the message arrived
                continue
            try:
                raw = event.batch_operations[0].message()
                if raw is not None and not isinstance(raw, bytes):
                    raise TypeError("received message is not bytes")
            except Exception as exc:  # noqa: BLE001 - gRPC itself misbehaves: fail closed, count it
                self._grpc_failure(exc)
                self._fail(call, b"authorization check failed")
                continue
            if raw is None:
                self._fail(call, b"Check requires exactly one request message")
                continue
            try:
                body = handle(raw, metadata)
            except Exception as exc:  # noqa: BLE001 - fail closed: an error status, never an allow
                # The type only: a message could quote request bytes. Not a loop fault: the request did not decode.
                log.error("check call failed; answered INTERNAL (fail closed)",
                          extra={"error": exc.__class__.__name__})
                self._fail(call, b"authorization check failed")
                continue
            try:
                faults = self._faults
                if faults.corrupt_answers:
                    body = b""
                if faults.fail_sends_from is not None and self.answered + 1 >= faults.fail_sends_from:
                    raise InjectedFault("send refused")
                # Counted before the batch starts: the client may have the answer before the call returns.
                self.answered += 1
                try:
                    call.start_server_batch(
                        (send_metadata((), 0), send_message(body, 0), send_status((), ok, b"", 0)), _SENT)
                except Exception:
                    self.answered -= 1
                    raise
                self._failures_in_a_row = 0
            except Exception as exc:  # noqa: BLE001 - fail closed: an error status, never an allow
                log.error("check answer could not be sent; answered INTERNAL (fail closed)",
                          extra={"error": exc.__class__.__name__})
                self._grpc_failure(exc)
                self._fail(call, b"authorization check failed")

    def _fail(self, call, details: bytes) -> None:
        c = self._c
        try:
            call.start_server_batch((c.SendInitialMetadataOperation((), 0),
                                     c.SendStatusFromServerOperation((), c.StatusCode.internal, details, 0)), _SENT)
        except Exception:  # noqa: BLE001 - the call is already gone
            pass
