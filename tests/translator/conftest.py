"""Fixtures for the translator server tests: the real app under uvicorn on a free loopback port (in a thread
of the test process, so a test costs milliseconds), pointed at the scripted loopback upstream."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.upstream import ScriptedUpstream
from tests.translator.server import TranslatorServer, translator_settings


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


def openai_backend_env(upstream_url: str) -> dict[str, str]:
    """The default shared translator: the scripted upstream as an OpenAI-compatible backend."""
    return {"OPENAI_BASE_URL": upstream_url + "/v1", "TRANSLATOR_PING_INTERVAL": "0.2"}


@pytest.fixture(scope="module")
def _shared_pair(request) -> Iterator[tuple[ScriptedUpstream, TranslatorServer]]:
    # A test module picks another backend by defining `translator_env(upstream_url) -> dict`.
    env_for = getattr(request.module, "translator_env", openai_backend_env)
    with ScriptedUpstream() as up:
        srv = TranslatorServer(translator_settings(**env_for(up.url))).start()
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
    """Translator routed to the scripted upstream (by default as an OpenAI-compatible backend, no static keys,
    pings after 0.2 s of upstream silence; see `translator_env`)."""
    return _shared_pair[1]
