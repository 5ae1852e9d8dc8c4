"""Backend kind -> implementation. One entry per module in this package; a new backend (e.g. the OpenAI
Responses API) is one more module, one more `BackendKind` value in `translator.routing` and one more entry
here."""

from __future__ import annotations

from typing import Callable, Mapping

from translator.backends.anthropic_messages import AnthropicBackend
from translator.backends.base import Backend, BackendDeps
from translator.backends.litellm_sdk import LiteLLMBackend
from translator.backends.openai_chat import OpenAIChatBackend
from translator.backends.transport import Transport
from translator.errors import ApiError
from translator.routing import Target
from translator.settings import Settings

BACKENDS: Mapping[str, Callable[[BackendDeps], Backend]] = {
    "openai": OpenAIChatBackend,
    "anthropic": AnthropicBackend,
    "litellm": LiteLLMBackend,
}


class Backends:
    """The backends of one serving process and the transport they share. `start()` inside the running event
    loop (the lifespan), `aclose()` at shutdown."""

    def __init__(self, settings: Settings, registry: Mapping[str, Callable[[BackendDeps], Backend]] = BACKENDS):
        self.settings = settings
        self.registry = registry
        self.transport: Transport | None = None
        self._by_kind: dict[str, Backend] = {}

    def start(self) -> None:
        self.transport = Transport.from_settings(self.settings)
        deps = BackendDeps(settings=self.settings, transport=self.transport)
        self._by_kind = {kind: factory(deps) for kind, factory in self.registry.items()}

    def for_target(self, target: Target) -> Backend:
        backend = self._by_kind.get(target.backend)
        if backend is None:
            raise ApiError(503, "api_error", f"no backend for {target.backend!r} is running")
        return backend

    async def aclose(self) -> None:
        for backend in self._by_kind.values():
            await backend.aclose()
        self._by_kind = {}
        if self.transport is not None:
            await self.transport.aclose()
            self.transport = None
