"""Fixtures for the translator server tests: the real app under uvicorn on a free loopback port (in a thread
of the test process, so a test costs milliseconds), pointed at the scripted loopback upstream."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Iterator

import anthropic
import pytest
import uvicorn

from tests.support.upstream import ScriptedUpstream
from translator.app import create_app
from translator.settings import Settings, load_settings


class TranslatorServer:
    """The translator app served by uvicorn in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    lifespan="on", timeout_graceful_shutdown=2))
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

    def client(self, api_key: str | None = "sk-user-test-key-0001", **kw) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=api_key, max_retries=0, timeout=30, **kw)


def translator_settings(*argv: str, **env: str) -> Settings:
    base = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    base.update(env)
    return load_settings(list(argv), base)


@pytest.fixture
def make_translator() -> Iterator:
    started: list[TranslatorServer] = []

    def make(*argv: str, **env: str) -> TranslatorServer:
        srv = TranslatorServer(translator_settings(*argv, **env)).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def _shared_pair() -> Iterator[tuple[ScriptedUpstream, TranslatorServer]]:
    with ScriptedUpstream() as up:
        srv = TranslatorServer(translator_settings(OPENAI_BASE_URL=up.url + "/v1",
                                                   TRANSLATOR_PING_INTERVAL="0.2")).start()
        try:
            yield up, srv
        finally:
            srv.stop()


@pytest.fixture
def upstream(_shared_pair) -> ScriptedUpstream:
    """The scripted upstream shared by this module's tests, reset for each test."""
    return _shared_pair[0].reset()


@pytest.fixture
def translator(_shared_pair) -> TranslatorServer:
    """Translator routed to the scripted upstream as an OpenAI-compatible backend, no static keys
    (pings after 0.2 s of upstream silence)."""
    return _shared_pair[1]
