"""A real OTLP/gRPC trace receiver on loopback (opentelemetry-proto's TraceService on a grpcio server) that
keeps every span it receives, for tests that check what Envoy, ext_authz and the translator export."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 2 server, 3 client
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0

    @property
    def is_root(self) -> bool:
        return not self.parent_span_id


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """`with OtlpReceiver() as otlp:`; `otlp.endpoint` is `http://127.0.0.1:<port>`."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.exports = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        got = []
        for rs in request.resource_spans:
            attrs = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            service = attrs.get("service.name", "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(service=service, name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                                    parent_span_id=s.parent_span_id.hex(), kind=s.kind,
                                    attributes={kv.key: _value(kv.value) for kv in s.attributes},
                                    status_code=s.status.code))
        with self._lock:
            self.spans.extend(got)
            self.exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float = 15.0) -> list[Span]:
        """All spans received, once `predicate(spans)` holds (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError("spans not received in time; got: "
                                     + ", ".join(f"{s.service}:{s.name}" for s in spans[-30:]))
            time.sleep(0.05)

    def reset(self) -> "OtlpReceiver":
        with self._lock:
            self.spans.clear()
        return self

    def __enter__(self) -> "OtlpReceiver":
        self._server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop(0).wait()
