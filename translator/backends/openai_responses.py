"""The OpenAI Responses API backend (`POST {base}/responses`): the models OpenAI serves only there (gpt-5-codex
and the other `mode: responses` models, by default) and any routing rule with `api: responses`.

The chat-completions backend with the Responses path and conversions (`translator.convert.responses_*`): same
transport, pooled client, SSE decoding and batching (the Responses stream has no `[DONE]`; it ends with the
body, after response.completed / incomplete / failed). Requests go with `store: false` (and, for
reasoning models, `include: ["reasoning.encrypted_content"]`): nothing is kept upstream, the reasoning state rides in the
conversation (thinking block signatures) and comes back as reasoning items on the next turn.
"""

from __future__ import annotations

from typing import Mapping

from translator.backends.openai_chat import OpenAIChatBackend, OpenAIChatClient
from translator.context import RequestContext
from translator.convert.responses_request import anthropic_to_responses
from translator.convert.responses_response import (chat_finish_reason, chat_usage, responses_error,
                                                   responses_to_anthropic)
from translator.convert.responses_stream import ResponsesStreamConverter
from translator.credentials import Credential
from translator.errors import ApiError, upstream_not_json
from translator.routing import Target
from translator.usage import anthropic_content_chars, from_openai


class OpenAIResponsesClient(OpenAIChatClient):
    endpoint = "/responses"

    async def complete(self, target: Target, body: dict, cred: Credential,
                       trace: Mapping[str, str] | None = None) -> dict:
        data = await self.post_json(target, body, cred, trace)
        if not isinstance(data, dict):
            raise upstream_not_json(target.provider)
        if data.get("status") == "failed" or data.get("error") is not None:
            status, kind, message = responses_error(data.get("error"), [cred.key])
            raise ApiError(status, kind, message, upstream=True)
        return data


class ResponsesBackend(OpenAIChatBackend):
    """Backend kind `responses`: the OpenAI-compatible backend with the Responses path and conversions."""

    kind = "responses"
    client_class = OpenAIResponsesClient
    to_upstream = staticmethod(anthropic_to_responses)
    stream_converter = ResponsesStreamConverter

    @staticmethod
    def _answer(ctx: RequestContext, raw: dict, tool_names: dict[str, str]) -> dict:
        req = ctx.request
        msg = responses_to_anthropic(raw, model=req.model, stop_sequences=req.stop_sequences, tool_names=tool_names)
        ctx.usage = from_openai(chat_usage(raw.get("usage")))
        if ctx.usage is None:
            ctx.output_chars = anthropic_content_chars(msg)
        ctx.finish_reason = chat_finish_reason(raw)
        return msg
