"""Optional OpenTelemetry tracing shared by ext_authz and the translator (docs/usage.md#tracing).

Off unless an OTLP endpoint is configured with the standard variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT`, gRPC, e.g. `http://127.0.0.1:4317`); `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` turn it off again. Off, `DISABLED` is returned: its `enabled` is False and the
callers skip every tracing step behind that one attribute check, and the SDK is not even imported. On, spans
go through the SDK's BatchSpanProcessor (a background thread; its `OTEL_BSP_*` variables apply) to the OTLP
gRPC exporter (its `OTEL_EXPORTER_OTLP_*` variables apply: headers, certificate, timeout, compression).

Context travels as W3C trace context (`traceparent`, `tracestate`) only, read from and written to plain header
mappings by the W3C propagator itself, never through OpenTelemetry's implicit current context (the services
are not instrumented libraries; each span is started and ended explicitly at one place).

What a span may carry is the caller's choice, and both callers keep to the same rule: identifiers and counts
(route, status, model names, token counts), never a key, a prompt or a completion.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any, Mapping, MutableMapping

from keyrelay_common.settings import TRUE_WORDS

log = logging.getLogger("keyrelay.tracing")

TRACE_HEADERS = ("traceparent", "tracestate")
_TRUE = TRUE_WORDS  # keyrelay_common.settings: the words every keyrelay setting reads as true


class Tracing:
    """Spans for one process. `enabled` False: every method is a no-op (the callers check `enabled` first so
    that a disabled process does no tracing work at all)."""

    enabled = False

    def __init__(self, tracer: Any = None, provider: Any = None) -> None:
        self._tracer = tracer
        self._provider = provider
        if tracer is not None:
            from opentelemetry.trace import SpanKind, set_span_in_context  # noqa: PLC0415
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: PLC0415

            self._propagator = TraceContextTextMapPropagator()
            self._set_span = set_span_in_context
            self._kinds = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
            self.enabled = True

    def start(self, name: str, *, parent_headers: Mapping[str, Any] | None = None, parent: Any = None,
              kind: str = "server", attributes: Mapping[str, Any] | None = None) -> Any:
        """A started span, child of the W3C context in `parent_headers` (lower-case names) or of the span
        `parent`; a new trace when neither has one. None when disabled."""
        if not self.enabled:
            return None
        if parent is not None:
            context = self._set_span(parent)
        elif parent_headers:
            context = self._propagator.extract(parent_headers)
        else:
            context = None
        return self._tracer.start_span(name, context=context, kind=self._kinds[kind],
                                       attributes=dict(attributes) if attributes else None)

    def inject(self, span: Any, headers: MutableMapping[str, str]) -> None:
        """Write `span`'s W3C context (`traceparent`, `tracestate`) into `headers`."""
        if span is not None and self.enabled:
            self._propagator.inject(headers, context=self._set_span(span))

    def shutdown(self) -> None:
        """Export what is pending and stop the exporter (also registered at exit)."""
        if self._provider is not None:
            provider, self._provider = self._provider, None
            try:
                provider.shutdown()
            except Exception:  # noqa: BLE001 - a collector that is gone must not break shutdown
                pass


DISABLED = Tracing()


def endpoint_from_env(environ: Mapping[str, str]) -> str | None:
    """The OTLP traces endpoint the standard variables configure, or None when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    endpoint = (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or "").strip()
    return endpoint or None


def from_env(service_name: str, environ: Mapping[str, str]) -> Tracing:
    """Tracing for this process as the environment configures it (`DISABLED` unless an endpoint is set).
    `OTEL_SERVICE_NAME` overrides `service_name`; `OTEL_RESOURCE_ATTRIBUTES` adds resource attributes."""
    endpoint = endpoint_from_env(environ)
    if endpoint is None:
        return DISABLED
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError as exc:  # the dependencies are declared; a broken install says so once and runs without
        log.error("tracing configured but OpenTelemetry is not importable; tracing stays off",
                  extra={"error": type(exc).__name__})
        return DISABLED
    name = environ.get("OTEL_SERVICE_NAME", "").strip() or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    insecure = endpoint.startswith("http://")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    tracing = Tracing(provider.get_tracer("keyrelay"), provider)
    atexit.register(tracing.shutdown)
    return tracing
