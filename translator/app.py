"""The translator's HTTP surface: the Anthropic Messages API in front of the routed backends.

`POST /v1/messages` is served by a plain ASGI handler (`TranslatorApp`), everything else by FastAPI.

`create_app` only wires: the request logic lives in `translator.service` (orchestration), `translator.backends`
(upstreams) and `translator.relay` (streams). Every failure, including 404 and 405 for unknown paths and
methods, is answered in the Anthropic error shape; no traceback ever reaches a client.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import keyrelay_tracing
from translator import litellm_loader, logs
from translator.backends.registry import Backends
from translator.budgets import UsageRecorder
from translator.caps import validate_caps
from translator.errors import ApiError, error_body
from translator.metrics import UsageLabels, build_metrics
from translator.routing import build_router
from translator.service import MessagesService, error_response, json_response
from translator.settings import Settings, load_settings

log = logging.getLogger("keyrelay.translator")


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
        if scope["type"] == "http" and not canonical_path(scope):
            # A route is chosen by the path as the client spelled it, never by a decoding of it: Envoy's route
            # and ext_authz see the raw bytes, so `/v1%2Fmessages` or `/v1/./messages` must not reach a route
            # here that they did not decide on.
            await error_response(ApiError(404, "not_found_error", "no route for this path (it is not in "
                                                                  "canonical form)"))(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/messages":
            response = await self._messages(scope, receive)
            await response(scope, receive, send)
            return
        await self.api(scope, receive, send)


def canonical_path(scope: dict) -> bool:
    """Whether the request's raw path is the canonical spelling of its path: no percent-encoding, no empty,
    `.` or `..` segments, and the same bytes as the decoded path."""
    raw = scope.get("raw_path")
    if raw is None:
        return True
    if b"%" in raw or b"//" in raw or b"\\" in raw or not raw.startswith(b"/"):
        return False
    if b"/." in raw and any(seg in (b".", b"..") for seg in raw.split(b"/")):
        return False
    return raw == scope["path"].encode("utf-8", "surrogateescape")


def _model_entry(model_id: str, display: str) -> dict:
    return {"type": "model", "id": model_id, "display_name": display, "created_at": "2025-01-01T00:00:00Z"}


def create_app(settings: Settings | None = None,
               tracing: keyrelay_tracing.Tracing = keyrelay_tracing.DISABLED) -> TranslatorApp:
    """Wire the service, its backends and the HTTP surface together (no request logic lives here).
    `tracing`: the process's tracing (`keyrelay_tracing.from_env`), off by default."""
    settings = settings or load_settings([])
    router = build_router(settings)
    for rule in router.routes.rules:
        validate_caps(rule.caps, f"routing rule {rule.match!r}")
    metrics = build_metrics(UsageLabels(settings.tenants, router.configured_models()))
    recorder = UsageRecorder(settings.redis_url, metrics) if settings.redis_url else None
    service = MessagesService(settings, router, metrics, Backends(settings), tracing, recorder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.aclose()

    app = FastAPI(title="keyrelay translator", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.keyrelay = service
    m = metrics

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
        if service.ready:
            return json_response({"status": "ready"})
        return json_response(error_body("api_error", "not ready"), 503)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        if litellm_loader.import_seconds is not None:
            m.litellm_import.set(litellm_loader.import_seconds)
        body, ctype = m.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model_entry(i, d) for i, d in router.claude_models()]
        m.requests.labels("models", "200", "").inc()
        return json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        for i, d in router.claude_models():
            if i == model_id:
                return json_response(_model_entry(i, d))
        raise ApiError(404, "not_found_error", f"model {model_id!r} is not configured")

    # ------------------------------------------------------------------ messages

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await service.messages(request.scope, request.receive)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        return await service.count_tokens(request.scope, request.receive)

    return TranslatorApp(app, service.messages)


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
    if gc.freeze not in litellm_loader.after_import:
        litellm_loader.after_import.append(gc.freeze)


def app_from_env() -> TranslatorApp:
    """uvicorn factory for worker processes (`--workers N`): settings come serialized through the environment."""
    settings = load_settings([])
    logs.configure(settings.log_level)  # a spawned worker does not inherit the parent's logging set-up
    app = create_app(settings, keyrelay_tracing.from_env("keyrelay-translator", os.environ))
    tune_gc()
    return app
