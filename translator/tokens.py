"""Token counting for POST /v1/messages/count_tokens on non-Anthropic backends.

The Anthropic request is converted with the same conversion layer as a real call (system, messages including
tool calls and results, images, tools), then counted with `litellm.token_counter` for the target model: the
model's own tokenizer where LiteLLM knows it (tiktoken o200k for current OpenAI models, ...), LiteLLM's default
otherwise. Images count with LiteLLM's default image cost (no image URL is ever fetched). LiteLLM is imported
lazily and the count runs in a worker thread so the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from translator.caps import caps_for
from translator.convert.openai_request import anthropic_to_openai
from translator.litellm_loader import get_litellm
from translator.routing import Target
from translator.schemas.anthropic import MessagesRequest

log = logging.getLogger("keyrelay.translator")


def has_remote_image(messages: list[dict]) -> bool:
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    if not str(url).startswith("data:"):
                        return True
    return False


def _count(litellm, model: str, body: dict) -> int:
    try:
        return int(litellm.token_counter(model=model, messages=body["messages"], tools=body.get("tools"),
                                         use_default_image_token_count=has_remote_image(body["messages"])))
    except Exception as exc:  # noqa: BLE001 - fall back to counting the serialized request text
        log.debug("token_counter failed for %s (%s); counting the serialized request", model, type(exc).__name__)
        return int(litellm.token_counter(model=model, text=orjson.dumps(body).decode()))


def _prepare(req: Any, target: Target) -> dict:
    # The validated count_tokens request as a messages request (no second validation: it has every field the
    # conversion reads).
    as_messages = MessagesRequest.model_construct(**dict(req), max_tokens=1, stream=False)
    return anthropic_to_openai(as_messages, model=target.model, caps=caps_for(target))


async def count_tokens_locally(req: Any, target: Target, *, offload: bool = False) -> int:
    """`req`: the validated CountTokensRequest. `offload`: convert in the worker thread too (a large request,
    see translator.request_body)."""
    if offload:
        litellm = await get_litellm()
        return await asyncio.to_thread(lambda: _count(litellm, target.model, _prepare(req, target)))
    body = _prepare(req, target)
    litellm = await get_litellm()
    return await asyncio.to_thread(_count, litellm, target.model, body)  # LiteLLM's counter takes bare OpenAI names and prefixed others
