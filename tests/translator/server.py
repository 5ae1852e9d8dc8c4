"""The translator app served by uvicorn on a free loopback port in a thread of the test process (a test
costs milliseconds instead of a process start). Used by tests/translator and tests/claude_code."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable

import anthropic
import uvicorn

from translator.app import create_app
from translator.serving import uvicorn_options
from translator.settings import Settings, load_settings


class TranslatorServer:
    """The translator app served by uvicorn in a background thread."""

    def __init__(self, settings: Settings, wrap: Callable[[Any], Any] | None = None) -> None:
        """`wrap` may wrap the ASGI app (e.g. to observe what a client sent), the app itself is unchanged."""
        self.settings = settings
        self.app = create_app(settings)
        self.asgi = wrap(self.app) if wrap else self.app
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # The console script's uvicorn options (httptools, uvloop, the head-coalescing protocol), so the tests
        # exercise what production runs; uvloop is only the event loop of the server's own thread.
        options = {**uvicorn_options(), "timeout_graceful_shutdown": 2}
        self.server = uvicorn.Server(uvicorn.Config(self.asgi, **options))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def state(self):
        return self.app.state.keyrelay

    def start(self) -> "TranslatorServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("translator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def leave_stream_early(self, api_key: str, max_tokens: int = 5) -> None:
        """Start a streamed /v1/messages, read two pieces of the answer and hang up, as a client that goes away."""
        import httpx

        with httpx.stream("POST", f"{self.url}/v1/messages", headers={"x-api-key": api_key},
                          json={"model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": True,
                                "messages": [{"role": "user", "content": "hello"}]}) as r:
            it = r.iter_bytes()
            next(it)
            next(it)

    def client(self, api_key: str | None = "sk-user-test-key-0001", **kw) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=api_key, max_retries=0, timeout=30, **kw)


def translator_settings(*argv: str, **env: str) -> Settings:
    base = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    base.update(env)
    return load_settings(list(argv), base)
