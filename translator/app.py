"""The translator's HTTP surface: the Anthropic Messages API in front of the routed backends.

`POST /v1/messages` is served by a plain ASGI handler (`TranslatorApp`), everything else by FastAPI.

Request bodies are read and parsed here (size-limited, orjson, then pydantic) rather than by FastAPI's body
binding, so malformed JSON and validation failures are 400 invalid_request_error in the Anthropic shape
(never FastAPI's 422), and so the 32 MB limit is enforced while reading. Every other failure, including 404 and
405 for unknown paths and methods, is answered in the same shape; no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse

from translator import credentials, logs
from translator.caps import caps_for, validate_caps
from translator.convert.anthropic_body import drop_synthetic_thinking
from translator.convert.openai_request import anthropic_to_openai, tool_name_map
from translator.convert.openai_response import openai_to_anthropic
from translator.convert.openai_stream import OpenAIStreamConverter
from translator.credentials import Credential
from translator.errors import ApiError, error_body
from translator.ids import new_message_id, new_request_id
from translator.metrics import Metrics, build_metrics
from translator.providers import litellm_path
from translator.providers.anthropic_native import AnthropicBackend
from translator.providers.litellm_path import LiteLLMBackend
from translator.providers.http1 import Http1Pool
from translator.providers.openai_native import OpenAIBackend, new_session
from translator.routing import Router, Target, build_router
from translator.schemas.anthropic import CountTokensRequest, MessagesRequest, validate_or_400
from translator.settings import Settings, load_settings
from translator.streaming import StreamStats, relay_anthropic, relay_openai
from translator.tokens import count_tokens_locally

log = logging.getLogger("keyrelay.translator")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass
class State:
    settings: Settings
    router: Router
    metrics: Metrics
    client: httpx.AsyncClient | None = None  # Anthropic passthrough
    session: Any = None  # aiohttp.ClientSession of the native OpenAI path (requests through a proxy)
    pool: Any = None  # Http1Pool of the native OpenAI path (direct requests)
    openai: OpenAIBackend | None = None
    anthropic: AnthropicBackend | None = None
    litellm: LiteLLMBackend | None = None
    ready: bool = False
    preload: asyncio.Task | None = field(default=None, repr=False)


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


def _lower_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    # Starlette's Headers are already case-insensitive; a plain dict is cheaper for repeated lookups.
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class TranslatorApp:
    """The ASGI application: `POST /v1/messages` (the hot path) is served directly, everything else (probes,
    models, metrics, count_tokens, lifespan, 404/405) by the FastAPI app `api`.

    Why the bypass: FastAPI's per-request machinery (routing, dependency solving, exception middleware, the
    Request object) costs CPU on every call, and this route does its own body reading, validation and error
    shaping anyway. The FastAPI app keeps the same route too (so `/v1/messages/`, methods and errors behave
    as before); both call the same handler.
    """

    def __init__(self, api: FastAPI, messages: Callable[[dict, Callable], Awaitable[Response]]) -> None:
        self.api = api
        self.state = api.state
        self._messages = messages

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/messages":
            response = await self._messages(scope, receive)
            await response(scope, receive, send)
            return
        await self.api(scope, receive, send)


def create_app(settings: Settings | None = None) -> TranslatorApp:
    settings = settings or load_settings([])
    router = build_router(settings)
    for rule in router.routes.rules:
        validate_caps(rule.caps, f"routing rule {rule.match!r}")
    state = State(settings=settings, router=router, metrics=build_metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = state.settings
        state.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=s.connect_timeout_s, read=s.read_timeout_s, write=s.read_timeout_s,
                                  pool=s.connect_timeout_s),
            limits=httpx.Limits(max_connections=s.max_connections, max_keepalive_connections=s.max_connections,
                                keepalive_expiry=60),
            headers={"user-agent": "keyrelay-translator/0.1"},
        )
        state.session = new_session(connect_timeout_s=s.connect_timeout_s, read_timeout_s=s.read_timeout_s,
                                    max_connections=s.max_connections)
        state.pool = Http1Pool(connect_timeout_s=s.connect_timeout_s, read_timeout_s=s.read_timeout_s,
                               max_connections=s.max_connections)
        state.openai = OpenAIBackend(state.session, state.pool)
        state.anthropic = AnthropicBackend(state.client)
        state.litellm = LiteLLMBackend(s.read_timeout_s, first_chunk_wait_s=s.ping_interval_s)
        if s.preload_litellm or state.router.needs_litellm():
            async def preload() -> None:
                try:
                    await litellm_path.get_litellm()
                except Exception as exc:  # noqa: BLE001 - stay not-ready (fail closed), say why once
                    log.error("cannot import litellm (%s): routes through LiteLLM stay unavailable, /readyz 503",
                              type(exc).__name__)
                    return
                state.metrics.litellm_import.set(litellm_path.import_seconds or 0)
                log.info("litellm imported in %.2fs", litellm_path.import_seconds or 0)
                state.ready = True

            state.preload = asyncio.create_task(preload())
        else:
            state.ready = True
        try:
            yield
        finally:
            state.ready = False
            if state.preload is not None and not state.preload.done():
                state.preload.cancel()
            await state.client.aclose()
            await state.session.close()
            await state.pool.close()

    app = FastAPI(title="keyrelay translator", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.keyrelay = state
    m = state.metrics

    # ------------------------------------------------------------------ error handlers (Anthropic shape only)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        if status == 404:
            err = ApiError(404, "not_found_error", f"no route for {request.method} {request.url.path}")
        elif status == 405:
            err = ApiError(405, "invalid_request_error",
                           f"method {request.method} is not allowed for {request.url.path}")
        else:
            err = ApiError(status, "api_error" if status >= 500 else "invalid_request_error",
                           str(exc.detail) if isinstance(exc.detail, str) else "request failed")
        m.requests.labels("other", str(status), "").inc()
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(ApiError(400, "invalid_request_error", "invalid request"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        return error_response(ApiError(500, "api_error", "internal error in the translator"))

    # ------------------------------------------------------------------ probes and metadata

    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        return json_response({"status": "ok", "service": "keyrelay-translator"})

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if state.ready:
            return json_response({"status": "ready"})
        return json_response(error_body("api_error", "not ready"), 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if litellm_path.import_seconds is not None:
            m.litellm_import.set(litellm_path.import_seconds)
        body, ctype = m.render()
        return Response(body, media_type=ctype)

    def _model_entry(model_id: str, display: str) -> dict:
        return {"type": "model", "id": model_id, "display_name": display, "created_at": "2025-01-01T00:00:00Z"}

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model_entry(i, d) for i, d in state.router.claude_models()]
        m.requests.labels("models", "200", "").inc()
        return json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        for i, d in state.router.claude_models():
            if i == model_id:
                return json_response(_model_entry(i, d))
        raise ApiError(404, "not_found_error", f"model {model_id!r} is not configured")

    # ------------------------------------------------------------------ messages

    def _finish(route: str, target: Target | None, status: int, started: float, cred: Credential | None,
                method: str, path: str, stream: bool, extra: str = "", err: ApiError | None = None) -> None:
        provider = target.provider if target else ""
        elapsed = time.perf_counter() - started
        m.observe_request(route, str(status), provider, elapsed)
        if err is not None and err.upstream:
            m.upstream_errors.labels(provider, str(status)).inc()
        if log.isEnabledFor(logging.INFO):  # format the line only when it is written
            logs.log_info(log, "%s %s status=%d provider=%s model=%s key_id=%s source=%s stream=%s ms=%.1f%s" % (
                method, path, status, provider or "-", target.model if target else "-",
                cred.key_id if cred else "-", cred.source if cred else "-", stream, elapsed * 1000, extra))

    async def handle_messages(scope: dict, receive: Callable) -> Response:
        """POST /v1/messages: the answer as a Response (a StreamingResponse for streams). Never raises."""
        started = time.perf_counter()
        request_id = new_request_id()
        target: Target | None = None
        cred: Credential | None = None
        path = scope["path"]
        m.inflight.inc()
        streaming_handed_off = False
        try:
            headers = _lower_headers(scope)
            data = parse_json_object(await read_body(headers, receive, state.settings.max_body_bytes))
            req = validate_or_400(MessagesRequest, data)
            target = state.router.resolve(req.model)
            cred = credentials.resolve(headers, target, state.settings)
            if target.path == "anthropic":
                resp = await _anthropic_messages(req, data, target, headers, cred, started, path, request_id)
            else:
                resp = await _openai_messages(req, target, cred, started, path, request_id)
            streaming_handed_off = isinstance(resp, StreamingResponse)
            if not streaming_handed_off:
                _finish("messages", target, resp.status_code, started, cred, "POST", path, False)
            return resp
        except ApiError as err:
            _finish("messages", target, err.status, started, cred, "POST", path, False, f" error={err.type}", err)
            return error_response(err, request_id)
        except ClientGone:
            _finish("messages", target, 499, started, cred, "POST", path, False, " error=client_disconnected")
            return Response(status_code=499)  # nobody reads it
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback to the client
            log.error("internal error on POST %s: %s", path, type(exc).__name__,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            err = ApiError(500, "api_error", "internal error in the translator")
            _finish("messages", target, 500, started, cred, "POST", path, False, " error=api_error")
            return error_response(err, request_id)
        finally:
            if not streaming_handed_off:
                m.inflight.dec()

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await handle_messages(request.scope, request.receive)

    def _stream_closed(target: Target, cred: Credential, started: float, path: str):
        def done(stats: StreamStats) -> None:
            m.inflight.dec()
            m.stream_chunks.labels(target.provider).inc(stats.chunks)
            status = 200
            extra = f" chunks={stats.chunks}"
            if stats.error is not None:
                extra += f" stream_error={stats.error.type}"
                m.upstream_errors.labels(target.provider, str(stats.error.status)).inc()
            _finish("messages", target, status, started, cred, "POST", path, True, extra)
        return done

    async def _openai_messages(req: MessagesRequest, target: Target, cred: Credential, started: float,
                               path: str, request_id: str) -> Response:
        caps = caps_for(target)
        body = anthropic_to_openai(req, model=target.model, caps=caps)
        tool_names = tool_name_map(req, caps)  # tool names shortened for the backend, mapped back in the answer
        backend = state.openai if target.path == "openai" else state.litellm
        assert backend is not None
        t0 = time.perf_counter()
        if not req.stream:
            raw = await backend.complete(target, body, cred)
            m.observe_first_byte(target.provider, time.perf_counter() - t0)
            msg = openai_to_anthropic(raw, model=req.model, stop_sequences=req.stop_sequences, tool_names=tool_names)
            return json_response(msg, headers={"request-id": request_id})
        stream = await backend.open_stream(target, body, cred)
        m.observe_first_byte(target.provider, time.perf_counter() - t0)
        converter = OpenAIStreamConverter(model=req.model, message_id=new_message_id(),
                                          stop_sequences=req.stop_sequences, tool_names=tool_names)
        gen = relay_openai(stream, converter, ping_interval=state.settings.ping_interval_s, stats=StreamStats(),
                           on_close=_stream_closed(target, cred, started, path))
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={**SSE_HEADERS, "request-id": request_id})

    async def _anthropic_messages(req: MessagesRequest, data: dict, target: Target, headers: dict[str, str],
                                  cred: Credential, started: float, path: str, request_id: str) -> Response:
        backend = state.anthropic
        assert backend is not None
        body = drop_synthetic_thinking(data)[0]
        t0 = time.perf_counter()
        if not req.stream:
            msg = await backend.complete(target, body, headers, cred, requested_model=req.model)
            m.observe_first_byte(target.provider, time.perf_counter() - t0)
            return json_response(msg, headers={"request-id": request_id})
        stream = await backend.open_stream(target, body, headers, cred, requested_model=req.model)
        m.observe_first_byte(target.provider, time.perf_counter() - t0)
        gen = relay_anthropic(stream, ping_interval=state.settings.ping_interval_s, stats=StreamStats(),
                              on_close=_stream_closed(target, cred, started, path))
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={**SSE_HEADERS, "request-id": request_id})

    # ------------------------------------------------------------------ count_tokens

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        started = time.perf_counter()
        target: Target | None = None
        cred: Credential | None = None
        try:
            headers = _lower_headers(request.scope)
            data = parse_json_object(await read_body(headers, request.receive, state.settings.max_body_bytes))
            req = validate_or_400(CountTokensRequest, data)
            target = state.router.resolve(req.model)
            if target.path == "anthropic":
                cred = credentials.resolve(headers, target, state.settings)
                assert state.anthropic is not None
                result = await state.anthropic.count_tokens(target, drop_synthetic_thinking(data)[0], headers, cred)
            else:
                result = {"input_tokens": await count_tokens_locally(data, target)}
            _finish("count_tokens", target, 200, started, cred, request.method, request.url.path, False)
            return json_response(result)
        except ApiError as err:
            _finish("count_tokens", target, err.status, started, cred, request.method, request.url.path, False,
                    f" error={err.type}", err)
            return error_response(err)

    return TranslatorApp(app, handle_messages)


def tune_gc() -> None:
    """Process-wide garbage-collector settings for a serving translator (the CLI and each worker call this
    once, after the imports).

    Every streamed chunk allocates a few dicts (orjson), so the collector ran constantly: py-spy showed
    ~17% of the translator's CPU in `gc_collect_main` while streaming. Objects of a request in flight
    survive the frequent young collections, get promoted, and then trigger full collections that walk the
    ~70,000 objects of the imported libraries. `gc.freeze()` moves everything that exists after start-up
    out of the collector's reach (it is never garbage), and a larger first threshold lets a request's
    short-lived objects die before a collection sees them. Reference cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    # LiteLLM (hundreds of thousands of objects) is imported later, lazily or by the preload: freeze it too.
    if gc.freeze not in litellm_path.after_import:
        litellm_path.after_import.append(gc.freeze)


def app_from_env() -> TranslatorApp:
    """uvicorn factory for worker processes (`--workers N`): settings come serialized through the environment."""
    settings = load_settings([])
    logs.configure(settings.log_level)  # a spawned worker does not inherit the parent's logging set-up
    app = create_app(settings)
    tune_gc()
    return app
