"""The HTTP side port: /metrics (Prometheus), /healthz (process alive), /readyz (serving checks).

Served by the standard library's threaded WSGI server in a daemon thread (the same approach as
prometheus_client.start_http_server), so scrapes never run on the event loop that answers checks."""

from __future__ import annotations

import json
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - access logs would not be JSON
        pass


def _json(start_response, status: str, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def make_app(registry: CollectorRegistry, ready: Callable[[], tuple[bool, dict]],
             healthy: Callable[[], tuple[bool, dict]] | None = None):
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok, info = healthy() if healthy else (True, {})
            return _json(start_response, "200 OK" if ok else "503 Service Unavailable",
                         {"status": "ok" if ok else "unhealthy", **info})
        if path == "/readyz":
            ok, info = ready()
            return _json(start_response, "200 OK" if ok else "503 Service Unavailable",
                         {"status": "ready" if ok else "not ready", **info})
        return _json(start_response, "404 Not Found",
                     {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})

    return app


class HttpSide:
    def __init__(self, host: str, port: int, app) -> None:
        server_class = _Server6 if ":" in host else _Server
        self.server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="ext_authz-http", daemon=True)

    def start(self) -> "HttpSide":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
