"""The OpenAI Responses API backend (`POST {base}/responses`): the models OpenAI serves only there (gpt-5-codex
and the other `mode: responses` models, by default) and any routing rule with `api: responses`.

Same transport, pooled client, SSE decoding and batching as the chat-completions backend (`openai_chat`): only
the path, the conversion (`translator.convert.responses_*`) and the stream converter differ. Requests go with
`store: false` and `include: ["reasoning.encrypted_content"]`: nothing is kept upstream, the reasoning state
rides in the conversation (thinking block signatures) and comes back as reasoning items on the next turn.
"""

from __future__ import annotations

import orjson

from translator.backends.base import BackendDeps
from translator.backends.chat import ChatStream, log_conversion_notes
from translator.backends.openai_chat import OpenAIChatClient
from translator.backends.transport import error_from_response, read_all
from translator.caps import caps_for
from translator.context import RequestContext
from translator.convert.openai_request import tool_name_map
from translator.convert.responses_request import anthropic_to_responses
from translator.convert.responses_response import responses_error, responses_to_anthropic
from translator.convert.responses_stream import ResponsesStreamConverter
from translator.credentials import Credential
from translator.errors import ApiError, upstream_not_json
from translator.ids import new_message_id
from translator.routing import Target
from translator.tokens import count_tokens_locally

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIResponsesClient(OpenAIChatClient):
    """POST /responses; the streamed events come out as dicts through the same chunk source (the Responses
    stream has no `[DONE]`: it ends with the body, after response.completed / incomplete / failed)."""

    def _url(self, target: Target) -> str:
        hit = self._urls.get(target.base_url)
        if hit is None:
            hit = self._urls[target.base_url] = f"{(target.base_url or DEFAULT_BASE_URL).rstrip('/')}/responses"
        return hit

    async def complete(self, target: Target, body: dict, cred: Credential) -> dict:
        resp = await self._post(target, body, cred, "application/json")
        if resp.status != 200:
            raise await error_from_response(resp, target.provider, cred)
        try:
            raw = await read_all(resp, target.provider)
        except BaseException:
            resp.close()
            raise
        resp.release()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise upstream_not_json(target.provider) from None
        if not isinstance(data, dict):
            raise upstream_not_json(target.provider)
        if data.get("status") == "failed" or data.get("error") is not None:
            status, kind, message = responses_error(data.get("error"), [cred.key])
            raise ApiError(status, kind, message, upstream=True)
        return data


class ResponsesBackend:
    """Backend kind `responses`."""

    kind = "responses"
    counts_upstream = False  # counted locally with the model's tokenizer (translator.tokens)

    def __init__(self, deps: BackendDeps) -> None:
        self.client = OpenAIResponsesClient(deps.transport)

    @staticmethod
    def _convert(ctx: RequestContext) -> tuple[dict, dict[str, str]]:
        caps = caps_for(ctx.target)
        notes: list[str] = []
        body = anthropic_to_responses(ctx.request, model=ctx.target.model, caps=caps, notes=notes)
        log_conversion_notes(ctx, notes)
        return body, tool_name_map(ctx.request, caps)

    async def complete(self, ctx: RequestContext) -> dict:
        body, tool_names = self._convert(ctx)
        req = ctx.request
        raw = await self.client.complete(ctx.target, body, ctx.cred)
        return responses_to_anthropic(raw, model=req.model, stop_sequences=req.stop_sequences, tool_names=tool_names)

    async def open_stream(self, ctx: RequestContext) -> ChatStream:
        body, tool_names = self._convert(ctx)
        req = ctx.request
        source = await self.client.open_stream(ctx.target, body, ctx.cred)
        converter = ResponsesStreamConverter(model=req.model, message_id=new_message_id(),
                                             stop_sequences=req.stop_sequences, tool_names=tool_names)
        return ChatStream(source, converter)

    async def count_tokens(self, ctx: RequestContext) -> dict:
        return {"input_tokens": await count_tokens_locally(ctx.body, ctx.target)}

    async def aclose(self) -> None:
        pass
