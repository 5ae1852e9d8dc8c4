"""Shared helpers for the ext_authz tests: build CheckRequests, run the real service, call it over gRPC."""

from __future__ import annotations

import contextlib
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc

from ext_authz._gen.envoy.config.core.v3.base_pb2 import HeaderValue
from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from ext_authz._gen.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from tests.support.procs import Proc, base_env, free_port, script

CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
ENVOY_STREAM_ID = "13857315842587215977"


def check_request(headers: dict[str, str] | list[tuple[str, str | bytes]] | None = None, route: str | None = None,
                  raw: bool = False, request_id: str | None = "req-1") -> CheckRequest:
    """A CheckRequest like Envoy sends: `headers` map, or `header_map` with raw values when raw=True.
    `request_id` goes in the x-request-id header (None: no such header); `http.id` is Envoy's internal
    stream id, which logs must not use."""
    req = CheckRequest()
    http = req.attributes.request.http
    http.id = ENVOY_STREAM_ID
    http.method = "POST"
    http.path = "/v1/messages"
    http.host = "keyrelay.local"
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if request_id is not None and not any(name.lower() == "x-request-id" for name, _ in items):
        items.append(("x-request-id", request_id))
    if raw:
        http.header_map.SetInParent()
        for name, value in items:
            http.header_map.headers.append(HeaderValue(
                key=name, raw_value=value if isinstance(value, bytes) else value.encode()))
    else:
        for name, value in items:
            http.headers[name] = value
    if route is not None:
        req.attributes.context_extensions["keyrelay_route"] = route
    return req


def ok_headers(resp: CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


def metadata(resp: CheckResponse) -> dict:
    from google.protobuf.json_format import MessageToDict
    return MessageToDict(resp.dynamic_metadata)


class Service:
    """A running keyrelay-ext-authz process plus a gRPC stub."""

    def __init__(self, proc: Proc, grpc_port: int, http_port: int) -> None:
        self.proc = proc
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)

    def check(self, *args, **kwargs) -> CheckResponse:
        return self.stub.Check(check_request(*args, **kwargs), timeout=10)

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        _, text = self.http_get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            base, _, label_text = series.partition("{")
            if base != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def close(self) -> None:
        self.channel.close()


@contextlib.contextmanager
def running_service(policy: Path | None = None, env: dict[str, str] | None = None, workers: int = 1,
                    extra_args: list[str] | None = None) -> Iterator[Service]:
    grpc_port, http_port = free_port(), free_port()
    argv = [script("keyrelay-ext-authz"), "--grpc-addr", f"127.0.0.1:{grpc_port}",
            "--http-addr", f"127.0.0.1:{http_port}", "--reload-interval", "0.1", "--workers", str(workers)]
    if policy is not None:
        argv += ["--policy", str(policy)]
    argv += extra_args or []
    proc = Proc(argv, base_env(**(env or {})), name="ext_authz").wait_ready(60)
    service = Service(proc, grpc_port, http_port)
    try:
        yield service
    finally:
        service.close()
        proc.stop()
