"""The orchestration of `POST /v1/messages` and `POST /v1/messages/count_tokens`: read and validate the
request, route it, pick the credential, hand it to the backend of its kind, shape the answer, and finish it.

`MessagesService` holds its dependencies explicitly (settings, router, metrics, the backends); the HTTP
surface (`translator.app`) only wires it. Every request has one `RequestContext` (translator.context) and ends
in `finish` exactly once: for a non-streaming answer when the response is built, for a stream when the relay
closes it (its status, duration, chunk count and stream error are known then).

Request bodies are read and parsed here (size-limited, orjson, then pydantic) rather than by FastAPI's body
binding, so malformed JSON and validation failures are 400 invalid_request_error in the Anthropic shape
(never FastAPI's 422), and so the body limit is enforced while reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

import orjson
from starlette.responses import Response, StreamingResponse

from translator import credentials, litellm_loader, logs
from translator.backends.registry import Backends
from translator.context import RequestContext
from translator.errors import ApiError
from translator.ids import new_request_id
from translator.metrics import Metrics
from translator.relay import relay
from translator.routing import Router
from translator.schemas.anthropic import CountTokensRequest, MessagesRequest, validate_or_400
from translator.settings import Settings

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


class ClientGone(Exception):
    """The client disconnected before its request body was complete (nothing to answer)."""


async def read_body(headers: Mapping[str, str], receive: Callable[[], Awaitable[dict]], limit: int) -> bytes:
    """The raw request body from the ASGI `receive`; 413 over `limit` (checked on content-length and while
    reading, for chunked bodies). `headers` has lower-case names."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, "request_too_large", f"request body exceeds the {limit} byte limit")
        except ValueError:
            raise ApiError(400, "invalid_request_error", "invalid content-length header") from None
    first = b""
    parts: list[bytes] | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone()
        part = message.get("body", b"")
        if part:
            size += len(part)
            if size > limit:
                raise ApiError(413, "request_too_large", f"request body exceeds the {limit} byte limit")
            if not first:
                first = part
            else:
                if parts is None:
                    parts = [first]
                parts.append(part)
        if not message.get("more_body", False):
            break
    return b"".join(parts) if parts is not None else first


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object, or 400 invalid_request_error saying what is wrong with it."""
    if not raw.strip():
        raise ApiError(400, "invalid_request_error", "request body is empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request_error", f"request body is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request_error", "request body must be a JSON object")
    return data


def lower_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    # Starlette's Headers are already case-insensitive; a plain dict is cheaper for repeated lookups.
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class MessagesService:
    """Serves the messages routes. `start()` in the lifespan (inside the event loop), `aclose()` at shutdown;
    `ready` says whether every configured route can be served (LiteLLM imported when a route needs it)."""

    def __init__(self, settings: Settings, router: Router, metrics: Metrics, backends: Backends) -> None:
        self.settings = settings
        self.router = router
        self.metrics = metrics
        self.backends = backends
        self.ready = False
        self._preload: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.backends.start()
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

    async def aclose(self) -> None:
        self.ready = False
        if self._preload is not None and not self._preload.done():
            self._preload.cancel()
        await self.backends.aclose()

    # ------------------------------------------------------------------ the one place a request finishes

    def finish(self, ctx: RequestContext, status: int, err: ApiError | None = None) -> None:
        """Record a finished request once: metrics and its log line."""
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
        extra = ""
        if ctx.stream and status == 200:
            m.stream_chunks.labels(provider).inc(ctx.chunks)
            extra = f" chunks={ctx.chunks}"
            if ctx.error is not None:
                extra += f" stream_error={ctx.error.type}"
        elif ctx.error is not None:
            extra = f" error={ctx.error.type}"
        if ctx.error is not None and ctx.error.upstream:
            m.upstream_errors.labels(provider, str(ctx.error.status)).inc()
        if log.isEnabledFor(logging.INFO):  # format the line only when it is written
            target, cred = ctx.target, ctx.cred
            logs.log_info(log, "%s %s status=%d provider=%s model=%s key_id=%s source=%s stream=%s ms=%.1f%s" % (
                ctx.method, ctx.path, status, provider or "-", target.model if target else "-",
                cred.key_id if cred else "-", cred.source if cred else "-", ctx.stream, elapsed * 1000, extra))

    def _stream_closed(self, ctx: RequestContext) -> None:
        self.metrics.inflight.dec()
        self.finish(ctx, 200)

    # ------------------------------------------------------------------ POST /v1/messages

    async def messages(self, scope: dict, receive: Callable) -> Response:
        """The answer as a Response (a StreamingResponse for streams). Never raises."""
        ctx = RequestContext("messages", "POST", scope["path"], new_request_id(), lower_headers(scope))
        m = self.metrics
        m.inflight.inc()
        handed_off = False
        try:
            ctx.body = parse_json_object(await read_body(ctx.headers, receive, self.settings.max_body_bytes))
            req = ctx.request = validate_or_400(MessagesRequest, ctx.body)
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
            gen = relay(stream, ctx, ping_interval=self.settings.ping_interval_s, on_close=self._stream_closed)
            handed_off = True
            return StreamingResponse(gen, media_type="text/event-stream",
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
            ctx.body = parse_json_object(await read_body(ctx.headers, receive, self.settings.max_body_bytes))
            req = ctx.request = validate_or_400(CountTokensRequest, ctx.body)
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
