"""The orchestration of `POST /v1/messages` and `POST /v1/messages/count_tokens`: read and validate the
request, route it, pick the credential, hand it to the backend of its kind, shape the answer, and finish it.

`MessagesService` holds its dependencies explicitly (settings, router, metrics, the backends); the HTTP
surface (`translator.app`) only wires it. Every request has one `RequestContext` (translator.context) and ends
in `finish` exactly once: for a non-streaming answer when the response is built, for a stream when the relay
closes it (its status, duration, chunk count and stream error are known then).

Request bodies are read and decoded by `translator.request_body` (size-limited, structural caps, pydantic; large
bodies off the event loop) rather than by FastAPI's body binding, so malformed JSON and validation failures are
400 invalid_request_error in the Anthropic shape (never FastAPI's 422).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any, Awaitable, Callable, Mapping

import orjson
from starlette.responses import Response

import keyrelay_tracing
from keyrelay_common.identity import CREDENTIAL_HEADER, KEY_ID_HEADER, TENANT_HEADER
from translator import credentials, litellm_loader, logs
from translator.backends.registry import Backends
from translator.budgets import UsageRecorder
from translator.context import RequestContext
from translator.errors import ApiError
from translator.ids import new_request_id
from translator.metrics import Metrics
from translator.relay import Drain, RelayResponse
from translator.repeated_tools import RepeatedTools
from translator.routing import Router
from translator.request_body import (OFFLOAD_BYTES, ClientGone, RequestLimits, decode_request, lower_headers,
                                     read_body, release_stepwise)
from translator.schemas.anthropic import CountTokensRequest, MessagesRequest
from translator.settings import Settings
from translator.usage import estimate

log = logging.getLogger("keyrelay.translator")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class JSONBytesResponse(Response):
    """A Starlette Response of already-encoded JSON whose raw headers are built directly (Response.__init__
    and init_headers generalize over media types, charsets and header merging on every answer)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        raw = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers = raw


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONBytesResponse(orjson.dumps(data), status, headers)


def error_response(err: ApiError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id:
        headers["request-id"] = request_id
    return json_response(err.body(), err.status, headers)


class MessagesService:
    """Serves the messages routes. `start()` in the lifespan (inside the event loop), `aclose()` at shutdown;
    `ready` says whether every configured route can be served (LiteLLM imported when a route needs it)."""

    def __init__(self, settings: Settings, router: Router, metrics: Metrics, backends: Backends,
                 tracing: keyrelay_tracing.Tracing = keyrelay_tracing.DISABLED,
                 budget_usage: UsageRecorder | None = None) -> None:
        self.settings = settings
        self.budget_usage = budget_usage  # adds usage to the budget counters in Redis (None: no Redis URL)
        self.router = router
        self.metrics = metrics
        self.backends = backends
        self.limits = RequestLimits.from_settings(settings)
        # Tool definitions decoded once (translator.repeated_tools); None when the setting turns it off.
        self.repeated_tools = (RepeatedTools(max_total_bytes=settings.tools_cache_bytes)
                               if settings.tools_cache_bytes else None)
        self.tracing = tracing
        self.ready = False
        self.drain = Drain()
        self._preload: asyncio.Task | None = None
        self._signals: dict[int, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.backends.start()
        if self.budget_usage is not None:
            await self.budget_usage.start()
        self._chain_signals()
        if self.settings.preload_litellm or self.router.needs_litellm():
            self._preload = asyncio.create_task(self._preload_litellm())
        else:
            self.ready = True

    async def _preload_litellm(self) -> None:
        try:
            await litellm_loader.get_litellm()
        except Exception as exc:  # noqa: BLE001 - stay not-ready (fail closed), say why once
            log.error("cannot import litellm (%s): routes through LiteLLM stay unavailable, /readyz 503",
                      type(exc).__name__)
            return
        seconds = litellm_loader.import_seconds or 0
        self.metrics.litellm_import.set(seconds)
        log.info("litellm imported in %.2fs", seconds)
        self.ready = True

    def _chain_signals(self) -> None:
        """Start the streams' drain (`begin_drain`) when the process is told to stop, before the server's own
        handler (uvicorn's, installed before the app starts) stops accepting and waits for the requests in
        flight. Only in the main thread (where signal handlers live); the server must wait longer than the
        grace (`translator.serving.uvicorn_options`)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: Any, previous: Callable = previous) -> None:
                loop.call_soon_threadsafe(self.begin_drain)
                previous(signum, frame)

            self._signals[sig] = previous
            signal.signal(sig, handler)

    def begin_drain(self) -> None:
        """Streams in flight (and any that still start) get `shutdown_grace_s`, then end with an
        overloaded_error event; /readyz answers 503 from now on."""
        if not self.drain.draining:
            log.info("stopping: streams in flight get %.0f s to finish", self.settings.shutdown_grace_s)
        self.ready = False
        self.drain.begin(self.settings.shutdown_grace_s)

    async def aclose(self) -> None:
        for sig, previous in self._signals.items():
            signal.signal(sig, previous)
        self._signals.clear()
        self.ready = False
        if self._preload is not None and not self._preload.done():
            self._preload.cancel()
        if self.budget_usage is not None:
            await self.budget_usage.aclose()
        await self.backends.aclose()

    # ------------------------------------------------------------------ the one place a request finishes

    def finish(self, ctx: RequestContext, status: int, err: ApiError | None = None) -> None:
        """Record a finished request once: metrics, usage (docs/usage.md), its log line and its span."""
        if ctx.finished:
            return
        ctx.finished = True
        ctx.status = status
        if err is not None:
            ctx.error = err
        m = self.metrics
        provider = ctx.provider
        elapsed = ctx.elapsed()
        m.observe_request(ctx.route, str(status), provider, elapsed)
        if ctx.stream and status == 200:
            m.observe_stream_chunks(provider, ctx.chunks)
        if ctx.error is not None and ctx.error.upstream:
            m.upstream_errors.labels(provider, str(ctx.error.status)).inc()
        target = ctx.target
        usage = ctx.usage
        if ctx.route == "messages":
            if usage is None and status == 200:  # answered, but the upstream reported no usage
                usage = ctx.usage = estimate(ctx.input_chars, ctx.output_chars)
            m.observe_usage(ctx.headers.get(TENANT_HEADER), target.model if target else None, status, usage,
                            ctx.first_token_s)
            if self.budget_usage is not None:  # queued only; written off the response path
                self.budget_usage.record(ctx.headers.get(TENANT_HEADER), ctx.headers.get(KEY_ID_HEADER), usage,
                                         ctx.headers.get("x-request-id"))
        if log.isEnabledFor(logging.INFO):  # build the line only when it is written
            cred, headers = ctx.cred, ctx.headers
            logs.log_fields(log, "request", logs.request_fields(
                ctx.route, ctx.method, ctx.path, status, elapsed,
                request_id=headers.get("x-request-id") or ctx.request_id,
                key_id=cred.key_id if cred else headers.get(KEY_ID_HEADER),
                tenant=headers.get(TENANT_HEADER), credential=headers.get(CREDENTIAL_HEADER),
                credential_source=cred.source if cred else None,
                requested_model=ctx.request.model if ctx.request is not None else None,
                model=target.model if target else None, backend=target.backend if target else None,
                provider=provider or None, stream=ctx.stream, tokens=usage.as_dict() if usage else None,
                ttft_s=ctx.first_token_s, error=ctx.error.type if ctx.error is not None else None,
                chunks=ctx.chunks if ctx.stream else None))
        if ctx.span is not None:
            end_span(ctx)
        # Nothing of a finished request may wait for the cycle collector (the serving process freezes the GC
        # and collects its oldest generation rarely): the body goes now (a large one a slice per loop
        # iteration), and the error keeps no traceback (whose frames would refer back to this context).
        if ctx.size > OFFLOAD_BYTES:
            release_stepwise(ctx.body.get("messages") if isinstance(ctx.body, dict) else None,
                             getattr(ctx.request, "messages", None))
        ctx.body = ctx.request = None
        if ctx.error is not None:
            ctx.error.__traceback__ = None
            ctx.error.__context__ = None

    def _stream_closed(self, ctx: RequestContext) -> None:
        self.metrics.inflight.dec()
        self.finish(ctx, 200)

    # ------------------------------------------------------------------ POST /v1/messages

    async def messages(self, scope: dict, receive: Callable) -> Response | RelayResponse:
        """The answer as an ASGI response (a RelayResponse for streams). Never raises."""
        ctx = RequestContext("messages", "POST", scope["path"], new_request_id(), lower_headers(scope))
        m = self.metrics
        m.inflight.inc()
        handed_off = False
        if self.tracing.enabled:
            start_span(self.tracing, ctx)
        try:
            raw = await read_body(ctx.headers, receive, self.limits.max_body_bytes)
            ctx.size = ctx.input_chars = len(raw)
            ctx.body, req = await decode_request(raw, MessagesRequest, self.limits, self.repeated_tools)
            del raw
            ctx.request = req
            ctx.target = self.router.resolve(req.model)
            ctx.cred = credentials.resolve(ctx.headers, ctx.target, self.settings)
            backend = self.backends.for_target(ctx.target)
            t0 = time.perf_counter()
            if not req.stream:
                msg = await backend.complete(ctx)
                ctx.first_byte_s = time.perf_counter() - t0
                m.observe_first_byte(ctx.provider, ctx.first_byte_s)
                self.finish(ctx, 200)
                return json_response(msg, headers={"request-id": ctx.request_id})
            ctx.stream = True
            stream = await backend.open_stream(ctx)
            ctx.first_byte_s = time.perf_counter() - t0
            m.observe_first_byte(ctx.provider, ctx.first_byte_s)
            handed_off = True
            return RelayResponse(stream, ctx, ping_interval=self.settings.ping_interval_s,
                                 on_close=self._stream_closed, drain=self.drain,
                                 headers={**SSE_HEADERS, "request-id": ctx.request_id})
        except ApiError as err:
            ctx.stream = False
            self.finish(ctx, err.status, err)
            return error_response(err, ctx.request_id)
        except ClientGone:
            ctx.stream = False
            self.finish(ctx, 499, ApiError(499, "client_disconnected", "client disconnected"))
            return Response(status_code=499)  # nobody reads it
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback to the client
            log.error("internal error on POST %s: %s", ctx.path, type(exc).__name__,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            err = ApiError(500, "api_error", "internal error in the translator")
            ctx.stream = False
            self.finish(ctx, 500, err)
            return error_response(err, ctx.request_id)
        finally:
            if not handed_off:
                m.inflight.dec()

    # ------------------------------------------------------------------ POST /v1/messages/count_tokens

    async def count_tokens(self, scope: dict, receive: Callable) -> Response:
        ctx = RequestContext("count_tokens", scope["method"], scope["path"], new_request_id(),
                             lower_headers(scope))
        try:
            raw = await read_body(ctx.headers, receive, self.limits.max_body_bytes)
            ctx.size = len(raw)
            ctx.body, req = await decode_request(raw, CountTokensRequest, self.limits)
            del raw
            ctx.request = req
            ctx.target = self.router.resolve(req.model)
            backend = self.backends.for_target(ctx.target)
            if backend.counts_upstream:  # the upstream counts: the request needs the caller's credential
                ctx.cred = credentials.resolve(ctx.headers, ctx.target, self.settings)
            result = await backend.count_tokens(ctx)
            self.finish(ctx, 200)
            return json_response(result)
        except ApiError as err:
            self.finish(ctx, err.status, err)
            return error_response(err)


# ---------------------------------------------------------------------- tracing (only when it is on)


def start_span(tracing: keyrelay_tracing.Tracing, ctx: RequestContext) -> None:
    """The request's span, child of the W3C context Envoy sent (`traceparent`), and the context the upstream
    request carries (its parent is this span)."""
    try:
        ctx.span = tracing.start("chat", parent_headers={k: ctx.headers[k] for k in keyrelay_tracing.TRACE_HEADERS
                                                         if k in ctx.headers},
                                 attributes={"gen_ai.operation.name": "chat", "http.request.method": ctx.method,
                                             "url.path": logs.clean(ctx.path)})
        ctx.trace_headers = {}
        tracing.inject(ctx.span, ctx.trace_headers)
    except Exception:  # noqa: BLE001 - tracing never fails a request
        ctx.span = ctx.trace_headers = None


def end_span(ctx: RequestContext) -> None:
    """GenAI semantic-convention attributes (model, token usage, finish reason) and the outcome; never the key,
    the prompt or the completion."""
    span, target, usage = ctx.span, ctx.target, ctx.usage
    try:
        attrs: dict[str, Any] = {"http.response.status_code": ctx.status, "keyrelay.stream": ctx.stream,
                                 "keyrelay.request_id": logs.clean(ctx.headers.get("x-request-id") or ctx.request_id,
                                                                   128)}
        if ctx.request is not None:
            attrs["keyrelay.requested_model"] = logs.clean(ctx.request.model)
        if target is not None:
            attrs["gen_ai.request.model"] = logs.clean(target.model)
            attrs["gen_ai.provider.name"] = target.provider
            attrs["gen_ai.system"] = target.provider
            span.update_name(f"chat {logs.clean(target.model, 128)}")
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = usage.input + usage.cache_read + usage.cache_write
            attrs["gen_ai.usage.output_tokens"] = usage.output
            attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
            attrs["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write
            attrs["keyrelay.usage.reasoning_tokens"] = usage.reasoning
            attrs["keyrelay.usage.estimated"] = usage.estimated
        if ctx.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [logs.clean(ctx.finish_reason, 64)]
        if ctx.first_token_s is not None:
            attrs["keyrelay.time_to_first_token_s"] = round(ctx.first_token_s, 6)
        tenant = ctx.headers.get(TENANT_HEADER)
        if tenant:
            attrs["keyrelay.tenant"] = logs.clean(tenant, 128)
        if ctx.error is not None:
            attrs["error.type"] = ctx.error.type
            if ctx.status >= 500 or ctx.stream:
                from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 - only with tracing on

                span.set_status(Status(StatusCode.ERROR, ctx.error.type))
        span.set_attributes(attrs)
    except Exception:  # noqa: BLE001 - tracing never fails a request
        pass
    finally:
        span.end()
