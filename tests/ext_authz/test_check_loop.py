"""The direct Check handler (ext_authz/check_loop.py) over real gRPC, next to grpc's thread-pool handler: bad
calls end with an error status (Envoy: status_on_error, fail closed), never an allow and never a dead loop, and
nothing of the request reaches the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from ext_authz.check_loop import CheckLoop

from .helpers import CHECK_PATH, Service, check_request, ok_headers, running_service

KEY = "sk-checkloop-secret-0123456789"
POLICY = "version: 1\npassthrough: true\nrequire_key: true\n"


@pytest.fixture(scope="module", params=["direct", "pool"])
def service(request, tmp_path_factory) -> Service:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    with running_service(path, extra_args=["--check-handler", request.param]) as svc:
        svc.handler = request.param
        yield svc


def _raw_call(svc: Service, payload: bytes):
    call = svc.channel.unary_unary(CHECK_PATH)  # no serializers: the bytes go out as they are
    return call(payload, timeout=10)


# A valid CheckRequest carrying the key, then a truncated field: protobuf cannot decode it.
_VALID = check_request({"x-api-key": KEY}, route="messages").SerializeToString()


@pytest.mark.parametrize("name,payload", [
    ("truncated length-delimited field", b"\x0a\xff"),
    ("valid request followed by garbage", _VALID + b"\x0a\xff\x01"),
    ("wire type 7 does not exist", b"\x0f"),
])
def test_undecodable_request_is_an_error_status(service: Service, name: str, payload: bytes) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _raw_call(service, payload)
    assert err.value.code() == grpc.StatusCode.INTERNAL, name
    # The handler is still serving afterwards.
    assert ok_headers(service.check({"x-api-key": KEY}, route="messages"))["authorization"] == f"Bearer {KEY}"
    # Nothing of the request is logged, not even inside an exception message.
    assert KEY not in service.proc.output


def test_call_without_a_message_is_an_error_status(service: Service) -> None:
    call = service.channel.stream_unary(CHECK_PATH)
    with pytest.raises(grpc.RpcError) as err:
        call(iter(()), timeout=10)
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED)
    assert service.check({"x-api-key": KEY}, route="messages").status.code == 0


def test_raw_bytes_in_raw_bytes_out(service: Service) -> None:
    from ext_authz._gen.envoy.service.auth.v3.external_auth_pb2 import CheckResponse

    resp = CheckResponse.FromString(_raw_call(service, _VALID))
    assert resp.status.code == 0 and ok_headers(resp)["x-authz-credential"] == "passthrough"
    resp = CheckResponse.FromString(_raw_call(service, b""))  # an empty message is a request without headers
    assert resp.denied_response.status.code == 401


def test_cancelled_checks_leave_the_loop_serving(service: Service) -> None:
    futures = [service.stub.Check.future(check_request({"x-api-key": KEY}, route="messages"), timeout=10)
               for _ in range(50)]
    for f in futures[::2]:
        f.cancel()
    for f in futures[1::2]:
        try:
            assert f.result().status.code == 0
        except grpc.FutureCancelledError:  # pragma: no cover - only the even ones were cancelled
            raise
    assert service.check({"x-api-key": KEY}, route="messages").status.code == 0


class _NotAGrpcServer:
    pass


def test_attach_falls_back_when_grpc_internals_differ(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ext_authz.check_loop"):
        assert CheckLoop.attach(_NotAGrpcServer(), lambda raw, metadata: raw) is None
    assert "direct Check handler unavailable" in caplog.text


def test_check_handler_setting(tmp_path: Path) -> None:
    from ext_authz.settings import SettingsError, resolve_config

    assert resolve_config([], {}).check_handler == "direct"
    assert resolve_config([], {"EXT_AUTHZ_CHECK_HANDLER": "POOL"}).check_handler == "pool"
    assert resolve_config(["--check-handler", "direct"], {"EXT_AUTHZ_CHECK_HANDLER": "pool"}).check_handler == "direct"
    with pytest.raises(SettingsError, match="--check-handler must be direct or pool"):
        resolve_config(["--check-handler", "fast"], {})


def test_readiness_follows_the_loop_thread(keep_signal_handlers) -> None:
    """In-process: a worker is serving only while its direct handler's thread runs."""
    from prometheus_client import CollectorRegistry

    from ext_authz.metrics import Metrics
    from ext_authz.policy import parse_policy
    from ext_authz.reload import PolicyStore
    from ext_authz.server import GrpcConfig, GrpcWorker

    from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc

    policy = parse_policy(POLICY.encode(), "test")
    worker = GrpcWorker(GrpcConfig("127.0.0.1", 0), PolicyStore(policy), Metrics(CollectorRegistry()), None,
                        lambda raw, source: policy)
    assert not worker.serving  # not started yet
    port = worker.start()
    try:
        assert worker.check_handler == "direct" and worker.serving
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            assert stub.Check(check_request({"x-api-key": KEY}, route="messages"), timeout=10).status.code == 0
    finally:
        loop = worker.check_loop
        worker.stop()
    assert not loop.alive and not worker.serving


def test_worker_falls_back_when_the_loop_cannot_start(monkeypatch, caplog, keep_signal_handlers) -> None:
    """A grpcio whose core refuses the registered-call request: the worker rebuilds its server with the public
    handler and still answers."""
    from prometheus_client import CollectorRegistry

    from ext_authz import check_loop
    from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
    from ext_authz.metrics import Metrics
    from ext_authz.policy import parse_policy
    from ext_authz.reload import PolicyStore
    from ext_authz.server import GrpcConfig, GrpcWorker

    def refuse(self):
        raise check_loop.CheckLoopError("TypeError: refused")

    monkeypatch.setattr(check_loop.CheckLoop, "start", refuse)
    policy = parse_policy(POLICY.encode(), "test")
    worker = GrpcWorker(GrpcConfig("127.0.0.1", 0), PolicyStore(policy), Metrics(CollectorRegistry()), None,
                        lambda raw, source: policy)
    with caplog.at_level(logging.WARNING, logger="ext_authz"):
        port = worker.start()
    try:
        assert worker.check_handler == "pool" and worker.serving
        assert "direct Check handler did not start" in caplog.text
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            assert stub.Check(check_request({"x-api-key": KEY}, route="messages"), timeout=10).status.code == 0
    finally:
        worker.stop()
