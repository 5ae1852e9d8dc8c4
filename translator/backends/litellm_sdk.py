"""Every provider without a native path (gemini/, vertex_ai/, bedrock/, azure/, ...) through LiteLLM.

LiteLLM knows those providers' auth and wire formats; its responses and stream chunks are turned into plain
OpenAI-shaped dicts with `.model_dump()` so the same conversion layer as the native OpenAI path serves them.
LiteLLM takes seconds to import, so it is imported on first use in a worker thread (or at startup when a
configured route needs it, see translator.service), never at module import.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Mapping

import orjson

from translator.backends.base import BackendDeps
from translator.backends.chat import ChatBackend
from translator.convert.encoded_json import EncodedList
from translator.credentials import Credential
from translator.litellm_loader import get_litellm
from translator.errors import (ApiError, extract_message, upstream_broken, upstream_error, upstream_timeout,
                               upstream_unreachable)
from translator.routing import Target

def map_exception(exc: BaseException, provider: str, cred: Credential) -> ApiError:
    """LiteLLM's OpenAI-style exceptions -> Anthropic-shaped errors."""
    name = type(exc).__name__
    if isinstance(exc, ApiError):
        return exc
    if "Timeout" in name or isinstance(exc, asyncio.TimeoutError):
        return upstream_timeout(provider)
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    headers: dict[str, str] = {}
    response = getattr(exc, "response", None)
    for source in (getattr(response, "headers", None), getattr(exc, "litellm_response_headers", None),
                   getattr(exc, "headers", None)):
        try:
            headers.update({str(k).lower(): str(v) for k, v in dict(source or {}).items()})
        except Exception:  # noqa: BLE001 - some LiteLLM responses are stubs without usable headers
            pass
    if name == "APIConnectionError":
        lowered = message.lower()
        if "connect" in lowered or "refused" in lowered:
            return upstream_unreachable(provider)
        return upstream_broken(provider)
    if not isinstance(status, int) or not 400 <= status < 600:
        status = 502
    if "Error converting to valid response" in message or "Unable to parse" in message:
        # LiteLLM reports its own failure to read an upstream 200 as a 4xx; for the client it is a bad gateway.
        return ApiError(502, "api_error",
                        f"upstream {provider} sent a response that could not be read", upstream=True)
    text = _LITELLM_NOISE.sub("", extract_message(message)).strip()
    if text.startswith("{"):
        try:  # the provider's JSON error body quoted as text: keep only its message
            text = extract_message(json.loads(text)) or text
        except ValueError:
            pass
    return upstream_error(status, text, provider=provider, headers=headers, secrets=[cred.key])


# LiteLLM wraps provider messages as "litellm.RateLimitError: GeminiException - <message>" plus a help link.
_LITELLM_NOISE = re.compile(r"litellm\.\w+:\s*|\w+Exception\s*-\s*|\s*(Received Model Group=.*|"
                            r"File an issue if litellm error.*|LiteLLM Retried:.*)$", re.S)


def _kwargs(target: Target, body: dict, cred: Credential, timeout: float,
            trace: Mapping[str, str] | None = None) -> dict[str, Any]:
    kw = {k: v for k, v in body.items() if k != "model"}
    if kw.get("tools"):
        # Tool schemas can be shared with other requests (translator.repeated_tools) and LiteLLM may change what
        # it is given: it gets its own copy (a fraction of a LiteLLM call's cost).
        tools = kw["tools"]
        kw["tools"] = orjson.loads(tools.json if type(tools) is EncodedList else orjson.dumps(tools))
    kw["model"] = target.model
    if cred.key:
        kw["api_key"] = cred.key
    if target.base_url:
        kw["api_base"] = target.base_url
    kw["timeout"] = timeout
    kw.update(target.extra)
    if trace:
        kw["extra_headers"] = dict(trace)  # sent with the provider's HTTP request
    return kw


class LiteLLMChunks:
    """A LiteLLM stream as a `ChunkSource` (translator.backends.chat). LiteLLM's reads must not be cancelled
    (that breaks its HTTP stream), so a read still pending when a wait ends keeps running in its task and
    the next call picks it up; this costs a task per chunk, which this path (seconds of CPU per request in
    LiteLLM already) can afford."""

    def __init__(self, wrapper: Any, provider: str, cred: Credential) -> None:
        self._wrapper = wrapper
        self._provider = provider
        self._cred = cred
        self._it = wrapper.__aiter__()
        self._pending: asyncio.Future | None = None
        self._ended = False

    async def prime(self, wait_s: float) -> None:
        """Wait up to `wait_s` for the first chunk. LiteLLM only sends some providers' requests (Gemini among
        them) when the stream is first iterated, so this is where their HTTP errors surface: raised here they
        become proper HTTP errors instead of an error event after a 200. A slower first chunk is not waited
        for beyond `wait_s`; the stream then starts and pings cover the silence."""
        self._pending = asyncio.ensure_future(self._it.__anext__())
        done, _ = await asyncio.wait((self._pending,), timeout=wait_s)
        if done and self._pending.exception() is not None:
            exc = self._pending.exception()
            self._pending = None
            if isinstance(exc, StopAsyncIteration):
                self._ended = True
                return
            raise map_exception(exc, self._provider, self._cred)

    async def next_batch(self, wait: float) -> list[dict] | None:
        if self._ended:
            return None
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._it.__anext__())
        if not self._pending.done():
            if wait <= 0:
                return []
            done, _ = await asyncio.wait((self._pending,), timeout=wait)
            if not done:
                return []
        task, self._pending = self._pending, None
        try:
            chunk = task.result()
        except StopAsyncIteration:
            self._ended = True
            return None
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - LiteLLM raises many types; all become Anthropic errors
            raise map_exception(exc, self._provider, self._cred) from None
        return [chunk.model_dump(exclude_none=True)]

    async def aclose(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        close = getattr(self._wrapper, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:  # noqa: BLE001 - closing a finished or failed stream must not raise
                pass


class LiteLLMBackend(ChatBackend):
    """Backend kind `litellm`: every provider LiteLLM serves for us (gemini/, vertex_ai/, bedrock/, ...)."""

    kind = "litellm"

    def __init__(self, deps: BackendDeps) -> None:
        self.timeout_s = deps.settings.read_timeout_s
        self.first_chunk_wait_s = deps.settings.ping_interval_s

    async def chat_complete(self, target: Target, body: dict, cred: Credential,
                            trace: Mapping[str, str] | None = None) -> dict:
        litellm = await get_litellm()
        kw = _kwargs(target, body, cred, self.timeout_s, trace)
        kw.pop("stream", None)
        kw.pop("stream_options", None)
        try:
            resp = await litellm.acompletion(**kw)
        except Exception as exc:  # noqa: BLE001
            raise map_exception(exc, target.provider, cred) from None
        return resp.model_dump(exclude_none=True)

    async def chat_stream(self, target: Target, body: dict, cred: Credential,
                          trace: Mapping[str, str] | None = None) -> LiteLLMChunks:
        litellm = await get_litellm()
        kw = _kwargs(target, body, cred, self.timeout_s, trace)
        kw["stream"] = True
        try:
            wrapper = await litellm.acompletion(**kw)
        except Exception as exc:  # noqa: BLE001
            raise map_exception(exc, target.provider, cred) from None
        stream = LiteLLMChunks(wrapper, target.provider, cred)
        try:
            await stream.prime(self.first_chunk_wait_s)
        except BaseException:
            await stream.aclose()
            raise
        return stream
