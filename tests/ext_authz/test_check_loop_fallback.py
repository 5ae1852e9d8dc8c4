"""The direct Check handler checks itself: a self-check before the worker is ready (one real Check over loopback
through the loop, compared with the pool handler's answer), and at runtime a switch to the pool handler when the
loop fails repeatedly or loses call slots: not ready (gRPC health and /readyz) while switching, one log line,
and no request dropped. Faults are injected through GrpcConfig.loop_faults (configuration passed in)."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from ext_authz.check_loop import OUTSTANDING_CALLS, LoopFaults
from ext_authz.httpd import HttpSide, make_app
from ext_authz.metrics import Metrics
from ext_authz.policy import parse_policy
from ext_authz.reload import PolicyStore
from ext_authz.server import GrpcConfig, GrpcWorker

from .helpers import check_request, ok_headers

KEY = "sk-fallback-secret-0123456789"
POLICY = parse_policy(b"version: 1\npassthrough: true\nrequire_key: true\n", "test")
SWITCH_LOG = "direct Check handler failed; switching to grpc's thread-pool handler"

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


class Running:
    def __init__(self, worker: GrpcWorker, changes: list[bool], http: HttpSide) -> None:
        self.worker, self.changes, self.http = worker, changes, http
        self.channel = grpc.insecure_channel(f"127.0.0.1:{worker.port}")
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def check(self, key: str | None = KEY):
        return self.stub.Check(check_request({"x-api-key": key} if key else {}, route="messages"), timeout=10)

    def readyz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http.port}/readyz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def health_status(self) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


@pytest.fixture
def run() -> Iterator:
    started: list[Running] = []

    def start(faults: LoopFaults | None = None, failure_limit: int = 3, drain_seconds: float = 1.0) -> Running:
        changes: list[bool] = []
        worker = GrpcWorker(GrpcConfig("127.0.0.1", 0, drain_seconds=drain_seconds, direct_failure_limit=failure_limit,
                                       loop_faults=faults),
                            PolicyStore(POLICY), Metrics(CollectorRegistry()), None, lambda raw, source: POLICY,
                            on_serving_change=changes.append)
        worker.start()
        http = HttpSide("127.0.0.1", 0, make_app(CollectorRegistry(), lambda: (worker.serving, {}))).start()
        running = Running(worker, changes, http)
        started.append(running)
        return running

    yield start
    for r in started:
        r.channel.close()
        r.worker.stop()
        r.http.stop()


def _switch_logs(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == SWITCH_LOG]


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_passing_self_check_keeps_the_direct_handler(run, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        r = run()
    assert r.worker.check_handler == "direct" and r.worker.serving
    assert r.worker.check_loop.answered == 1  # the self-check went through the loop
    assert ok_headers(r.check())["authorization"] == f"Bearer {KEY}"
    assert r.readyz() == 200 and r.health_status() == health_pb2.HealthCheckResponse.SERVING
    assert not _switch_logs(caplog)


@pytest.mark.parametrize("faults,problem", [
    (LoopFaults(corrupt_answers=True), "self-check: its answer differs from the pool handler's"),
    (LoopFaults(fail_sends_from=1), "self-check: the Check failed"),
], ids=["answer-differs", "check-fails"])
def test_a_failing_self_check_starts_on_the_pool_handler(run, caplog, faults: LoopFaults, problem: str) -> None:
    with caplog.at_level(logging.WARNING):
        r = run(faults)
    assert r.worker.check_handler == "pool" and r.worker.serving
    (record,) = _switch_logs(caplog)
    assert record.problem.startswith(problem) and record.at_start is True
    assert r.changes == []  # never reported ready before, so nothing to take back
    assert ok_headers(r.check())["authorization"] == f"Bearer {KEY}"
    assert r.check(key=None).denied_response.status.code == 401
    assert r.readyz() == 200 and r.health_status() == health_pb2.HealthCheckResponse.SERVING


class Watcher:
    """Records readiness (/readyz) and gRPC health as seen from outside, every few milliseconds."""

    def __init__(self, r: Running) -> None:
        self.r = r
        self.readyz: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.readyz.append(self.r.readyz())
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _open_health_watch(r: Running):
    """A health Watch stream on the direct server: it keeps that server draining for drain_seconds, so the
    not-ready window is long enough to be seen from outside."""
    stream = r.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    statuses: list[int] = []

    def read() -> None:
        try:
            for reply in stream:
                statuses.append(reply.status)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=read, daemon=True)
    t.start()
    _wait(lambda: statuses)
    return stream, statuses


def test_repeated_failures_switch_to_the_pool_handler(run, caplog) -> None:
    limit = 3
    with caplog.at_level(logging.WARNING):
        # Answer 1 is the self-check, answer 2 the first check below; from answer 3 on every send fails.
        r = run(LoopFaults(fail_sends_from=3), failure_limit=limit)
        assert r.worker.check_handler == "direct"
        stream, statuses = _open_health_watch(r)
        watcher = Watcher(r)
        _wait(lambda: watcher.readyz)
        try:
            assert r.check().status.code == 0
            for n in range(limit - 1):  # under the limit: still the direct handler, each call fails closed
                with pytest.raises(grpc.RpcError) as err:
                    r.check()
                assert err.value.code() == grpc.StatusCode.INTERNAL
                assert r.worker.check_handler == "direct" and r.worker.check_loop.fault is None
            with pytest.raises(grpc.RpcError) as err:  # the limit: a fault, and the switch starts
                r.check()
            assert err.value.code() == grpc.StatusCode.INTERNAL
            _wait(lambda: r.worker.check_handler == "pool" and r.worker.serving)
            # Seen from outside: ready, not ready while switching, ready again.
            _wait(lambda: 503 in watcher.readyz and 200 in watcher.readyz[watcher.readyz.index(503):])
        finally:
            watcher.close()
            stream.cancel()
    assert watcher.readyz[0] == 200
    assert r.changes == [False, True]
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    (record,) = _switch_logs(caplog)
    assert "3 Check calls in a row failed inside gRPC" in record.problem
    for _ in range(20):  # the pool handler answers everything now
        assert ok_headers(r.check())["authorization"] == f"Bearer {KEY}"
    assert r.readyz() == 200 and r.health_status() == health_pb2.HealthCheckResponse.SERVING
    assert len(_switch_logs(caplog)) == 1


def test_a_lost_call_slot_switches_without_dropping_a_request(run, caplog, tmp_path) -> None:
    """The slot of call 3 is not re-armed. Requests keep flowing through the real Envoy of envoy.yaml from several
    threads across the switch: every one is answered 200 (checked by the loop's remaining slots or by the pool
    handler; a stream cut while the direct server shuts down is retried by Envoy's ext_authz retry policy)."""
    from tests.e2e.conftest import start_envoy
    from tests.support.upstream import Reply, ScriptedUpstream

    statuses: list[int] = []
    stop = threading.Event()

    def client(port: int) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            conn.request("GET", "/v1/models", headers={"x-api-key": KEY})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()

    with ScriptedUpstream(default=Reply(json_body={"data": []})) as upstream, caplog.at_level(logging.WARNING):
        r = run(LoopFaults(fail_rearm_at=3))
        envoy = start_envoy("envoy_fallback_switch", ext_authz_port=r.worker.port, translator_port=upstream.port,
                            tmp=tmp_path, access_log=False)
        try:
            threads = [threading.Thread(target=client, args=(envoy.port,), daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            _wait(lambda: r.worker.check_handler == "pool" and r.worker.serving, timeout=20)
            count = len(statuses)
            _wait(lambda: len(statuses) > count + 50)  # and on through the pool handler
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            envoy.stop()
    assert statuses and all(code == 200 for code in statuses), [c for c in statuses if c != 200][:5]
    assert r.changes == [False, True]
    (record,) = _switch_logs(caplog)
    assert "a call slot was not re-armed" in record.problem and f"of {OUTSTANDING_CALLS} lost" in record.problem
    assert upstream.keys and set(upstream.keys) == {KEY}


def test_the_port_stays_exclusive_with_the_direct_handler(run) -> None:
    """The direct handler binds with SO_REUSEPORT (for the switch); a second single-process server on the same
    port still fails to start."""
    r = run()
    second = GrpcWorker(GrpcConfig("127.0.0.1", r.worker.port), PolicyStore(POLICY), Metrics(CollectorRegistry()),
                        None, lambda raw, source: POLICY)
    with pytest.raises(RuntimeError, match="address already in use"):
        second.start()
    assert r.check().status.code == 0


# keyrelay-ext-authz --workers 2, with the faults passed in through Config (no flag or variable sets them).
WORKERS_MAIN = """
import dataclasses, os, sys
from ext_authz import logs
from ext_authz.check_loop import LoopFaults
from ext_authz.settings import resolve_config
from ext_authz.startup import initial_policy
from ext_authz.workers import run_workers
cfg = dataclasses.replace(resolve_config(sys.argv[1:], os.environ), loop_faults=LoopFaults(fail_sends_from=3))
logs.setup(cfg.log_level)
sys.exit(run_workers(cfg, initial_policy(cfg)))
"""


def test_a_worker_switching_handlers_is_not_ready_in_the_parent(tmp_path) -> None:
    """Each of two workers fails from its third answer on and switches; the parent's /readyz counts it out while
    it switches and in again after, and every check is answered by the pool handlers afterwards."""
    import json
    import sys

    from tests.support.procs import Proc, base_env, free_port

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\npassthrough: true\nrequire_key: true\n")
    grpc_port, http_port = free_port(), free_port()
    proc = Proc([sys.executable, "-c", WORKERS_MAIN, "--grpc-addr", f"127.0.0.1:{grpc_port}", "--http-addr",
                 f"127.0.0.1:{http_port}", "--workers", "2", "--policy", str(policy), "--drain-seconds", "1"],
                base_env(), name="ext_authz_workers_faults").wait_ready(60)
    try:
        def switched() -> int:
            return proc.output.count(SWITCH_LOG)

        # Long-lived connections like Envoy's, spread over both workers by the kernel (SO_REUSEPORT).
        channels = [grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]
        stubs = [external_auth_pb2_grpc.AuthorizationStub(ch) for ch in channels]
        deadline = time.monotonic() + 30
        n = 0
        while switched() < 2:
            assert time.monotonic() < deadline, proc.output[-3000:]
            try:
                stubs[n % len(stubs)].Check(check_request({"x-api-key": KEY}, route="messages"), timeout=10)
            except grpc.RpcError as exc:
                # Fail closed before the switch; a stream cut by the direct server's shutdown (Envoy retries it).
                assert exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.CANCELLED), exc.code()
            n += 1
        for ch in channels:
            ch.close()
        _wait(lambda: proc.output.count('"msg":"worker not ready"') == 2)  # told through the parent's queue

        def all_ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
                    return json.loads(r.read())["workers_ready"] == 2
            except urllib.error.HTTPError:
                return False

        _wait(all_ready, timeout=20)
        for _ in range(10):
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                resp = external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                    check_request({"x-api-key": KEY}, route="messages"), timeout=10)
                assert ok_headers(resp)["authorization"] == f"Bearer {KEY}"
    finally:
        proc.stop()
    assert KEY not in proc.output


def test_the_self_check_is_not_counted_or_logged(run, caplog) -> None:
    def decisions(r: Running) -> float:
        return sum(sample.value for metric in r.worker.metrics.decisions.collect() for sample in metric.samples
                   if sample.name.endswith("_total"))

    with caplog.at_level(logging.DEBUG, logger="ext_authz.check"):
        r = run()
        assert r.worker.check_loop.answered == 1
        assert not [rec for rec in caplog.records if rec.name == "ext_authz.check"] and decisions(r) == 0
        assert r.check(key=None).denied_response.status.code == 401  # a real check is counted and logged
        assert [rec.getMessage() for rec in caplog.records if rec.name == "ext_authz.check"] == ["deny"]
        assert decisions(r) == 1
