"""The real service over real gRPC: decisions, health, metrics, readiness, fault handling, drain on SIGTERM,
several workers on one port."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from ext_authz.decide import key_digest
from ext_authz.metrics import Metrics
from ext_authz.reload import PolicyStore
from ext_authz.server import Authorizer

from .helpers import Service, check_request, metadata, ok_headers, running_service

KEY = "sk-grpc-test-0123456789"
TEAM_KEY = "sk-grpc-team-0123456789"
REVOKED = "sk-grpc-revoked-0123456"

POLICY = f"""\
version: 1
passthrough: true
require_key: true
key_format: '^sk-[A-Za-z0-9._-]{{8,256}}$'
allowlist:
  - {{sha256: {key_digest(KEY)}, tenant: default-team}}
  - {{sha256: {key_digest(TEAM_KEY)}, tenant: team-a}}
  - {{sha256: {key_digest(REVOKED)}, tenant: team-a}}
revoked:
  - sha256: {key_digest(REVOKED)}
routes:
  root: {{require_key: false}}
  health: {{require_key: false, passthrough: false}}
"""


@pytest.fixture(scope="module", params=["direct", "pool"])
def service(request, tmp_path_factory) -> Service:
    """Every test here runs against both Check handlers (the direct completion-queue loop, the default, and
    grpc's thread-pool handler, its fallback)."""
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    with running_service(path, extra_args=["--check-handler", request.param]) as svc:
        assert f'"check_handler":"{request.param}"' in svc.proc.output  # the handler asked for is the one serving
        yield svc


def test_ready_line_matches_the_contract(service: Service) -> None:
    ready = [l for l in service.proc.lines if l.startswith("ready:")]
    assert ready == [f"ready: ext_authz grpc on 127.0.0.1:{service.grpc_port} http on 127.0.0.1:{service.http_port}"]


def test_allow_with_x_api_key(service: Service) -> None:
    resp = service.check({"x-api-key": KEY, "x-authz-tenant": "forged", "x-authz-other": "1"}, route="messages")
    assert resp.status.code == 0 and resp.WhichOneof("http_response") == "ok_response"
    assert ok_headers(resp) == {"authorization": f"Bearer {KEY}", "x-authz-key-id": key_digest(KEY)[:16],
                                "x-authz-tenant": "default-team", "x-authz-credential": "passthrough"}
    assert sorted(resp.ok_response.headers_to_remove) == ["x-api-key", "x-authz-other"]
    assert metadata(resp) == {"key_id": key_digest(KEY)[:16], "tenant": "default-team", "credential": "passthrough",
                              "route": "messages"}


def test_allow_with_bearer_and_raw_header_map(service: Service) -> None:
    resp = service.check([("authorization", f"bearer {TEAM_KEY}"), ("x-api-key", TEAM_KEY)], route="count_tokens",
                         raw=True)
    assert resp.status.code == 0
    assert ok_headers(resp)["x-authz-tenant"] == "team-a"


@pytest.mark.parametrize("headers,route,status,grpc_code,error_type", [
    ({}, "messages", 401, grpc.StatusCode.UNAUTHENTICATED, "authentication_error"),
    ({"x-api-key": REVOKED}, "messages", 403, grpc.StatusCode.PERMISSION_DENIED, "permission_error"),
    ({"x-api-key": "sk-unknown-0123456789"}, "messages", 403, grpc.StatusCode.PERMISSION_DENIED, "permission_error"),
    ({"x-api-key": KEY, "authorization": f"Bearer {TEAM_KEY}"}, "messages", 400, grpc.StatusCode.INVALID_ARGUMENT,
     "invalid_request_error"),
    ({"x-api-key": "not-a-valid-format"}, "messages", 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
    ({"x-api-key": f"{KEY},{KEY}"}, "messages", 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
])
def test_denials(service: Service, headers, route, status, grpc_code, error_type) -> None:
    resp = service.check(headers, route=route)
    assert resp.status.code == grpc_code.value[0]
    assert resp.denied_response.status.code == status
    assert json.loads(resp.denied_response.body)["error"]["type"] == error_type
    assert metadata(resp)["route"] == route and metadata(resp)["reason"]


def test_open_routes(service: Service) -> None:
    resp = service.check({"authorization": "Bearer " + KEY}, route="health")
    assert ok_headers(resp) == {"x-authz-key-id": key_digest(KEY)[:16], "x-authz-tenant": "default-team",
                                "x-authz-credential": "fallback"}
    assert sorted(resp.ok_response.headers_to_remove) == ["authorization", "x-api-key"]
    resp = service.check({}, route="root")
    assert ok_headers(resp) == {"x-authz-credential": "fallback"}
    # No route extension means the default route: a key is required.
    assert service.check({}).denied_response.status.code == 401


def test_grpc_health(service: Service) -> None:
    stub = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "envoy.service.auth.v3.Authorization"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_http_side(service: Service) -> None:
    assert service.http_get("/healthz")[0] == 200
    code, body = service.http_get("/readyz")
    assert code == 200 and json.loads(body)["status"] == "ready"
    code, body = service.http_get("/nope")
    assert code == 404 and json.loads(body)["type"] == "error"


def test_metrics_count_decisions(service: Service) -> None:
    before_allow = service.metric("keyrelay_ext_authz_decisions_total", result="allow", reason="passthrough",
                                  route="models")
    before_deny = service.metric("keyrelay_ext_authz_decisions_total", result="deny", reason="revoked",
                                 route="models")
    before_hist = service.metric("keyrelay_ext_authz_check_duration_seconds_count")
    for _ in range(3):
        service.check({"x-api-key": KEY}, route="models")
    service.check({"x-api-key": REVOKED}, route="models")
    assert service.metric("keyrelay_ext_authz_decisions_total", result="allow", reason="passthrough",
                          route="models") == before_allow + 3
    assert service.metric("keyrelay_ext_authz_decisions_total", result="deny", reason="revoked",
                          route="models") == before_deny + 1
    assert service.metric("keyrelay_ext_authz_check_duration_seconds_count") == before_hist + 4
    assert service.metric("keyrelay_ext_authz_policy_info") == 1
    assert service.metric("keyrelay_ext_authz_policy_reload_errors_total") == 0
    # Route labels stay bounded.
    service.check({"x-api-key": KEY}, route="made-up-by-config")
    assert service.metric("keyrelay_ext_authz_decisions_total", route="other") >= 1


def test_parallel_checks(service: Service) -> None:
    keys = [KEY, TEAM_KEY, REVOKED, ""] * 50
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda k: service.check({"x-api-key": k} if k else {}, route="messages"), keys))
    for key, resp in zip(keys, results):
        if key in (KEY, TEAM_KEY):
            assert ok_headers(resp)["authorization"] == f"Bearer {key}"
        else:
            assert resp.WhichOneof("http_response") == "denied_response"


def test_internal_fault_is_an_explicit_deny_and_counted() -> None:
    class BrokenPolicy:
        routes: dict = {}
        def for_route(self, route):  # noqa: ANN001
            raise RuntimeError("boom")

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    authorizer = Authorizer(PolicyStore(BrokenPolicy()), metrics)
    resp = authorizer.check(check_request({"x-api-key": KEY}, route="messages"))
    assert resp.WhichOneof("http_response") == "denied_response"
    assert resp.denied_response.status.code == 500 and resp.status.code == 13
    assert json.loads(resp.denied_response.body)["error"]["type"] == "api_error"
    assert registry.get_sample_value("keyrelay_ext_authz_internal_errors_total") == 1
    assert registry.get_sample_value("keyrelay_ext_authz_decisions_total",
                                     {"result": "error", "reason": "internal_error", "route": "messages"}) == 1
    # Not a request at all: still an answer, never an exception.
    resp = authorizer.check(object())
    assert resp.denied_response.status.code == 500


@pytest.mark.parametrize("handler", ["direct", "pool"])
def test_sigterm_drains_and_exits_cleanly(tmp_path: Path, handler: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    with running_service(path, extra_args=["--check-handler", handler]) as svc:
        futures = [svc.stub.Check.future(check_request({"x-api-key": KEY}, route="messages"), timeout=10)
                   for _ in range(300)]
        time.sleep(0.02)
        svc.proc.popen.send_signal(signal.SIGTERM)
        ok = unavailable = 0
        for f in futures:
            try:
                resp = f.result()
                assert ok_headers(resp)["authorization"] == f"Bearer {KEY}"
                ok += 1
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
                unavailable += 1
        assert ok > 0
        assert svc.proc.popen.wait(15) == 0
        assert "stopping: draining in-flight checks" in svc.proc.output and '"stopped"' in svc.proc.output


def test_workers_share_one_port(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    with running_service(path, workers=2) as svc:
        total = 0
        for _ in range(8):  # fresh connections spread over the workers
            with grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
                stub = external_auth_pb2_grpc.AuthorizationStub(ch)
                for _ in range(5):
                    assert stub.Check(check_request({"x-api-key": KEY}, route="messages"), timeout=10).status.code == 0
                    total += 1
        code, body = svc.http_get("/readyz")
        assert code == 200 and json.loads(body)["workers_ready"] == 2
        assert svc.metric("keyrelay_ext_authz_decisions_total", result="allow", route="messages") == total
        worker_pids = {int(m) for m in re.findall(r'"worker ready","pid":(\d+)', svc.proc.output)}
        assert len(worker_pids) == 2
        assert svc.proc.output.count('"check_handler":"direct"') == 2
        # A worker that dies is replaced, and readiness follows.
        os.kill(sorted(worker_pids)[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(re.findall(r'"worker ready"', svc.proc.output)) < 3:
            assert time.monotonic() < deadline, svc.proc.output[-2000:]
            time.sleep(0.1)
        while svc.http_get("/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "worker died; restarting" in svc.proc.output
        assert svc.check({"x-api-key": KEY}, route="messages").status.code == 0
        worker_pids |= {int(m) for m in re.findall(r'"worker ready","pid":(\d+)', svc.proc.output)}
        svc.proc.popen.send_signal(signal.SIGTERM)
        assert svc.proc.popen.wait(20) == 0
        for pid in worker_pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
