"""Anthropic Messages request -> OpenAI Responses API request body (pure; docs/conversion.md, "Responses API").

Built on the chat-completions conversion (`openai_request._Converter`), which already settles every content
question (tool results in call order, images from tool results, documents, orphan results, mid-conversation
system messages, tool name and call id limits); its messages are then re-shaped into Responses `input` items.
What only the Responses API has is added here: earlier-turn reasoning items (from thinking blocks whose
signature this translator made, see `reasoning_signature`), `reasoning` controls, `store: false` with
`include: ["reasoning.encrypted_content"]`, and the `web_search` tool for Anthropic's web search server tool.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from translator.convert.openai_request import (
    BackendCaps,
    _Converter,
    _stable_short,
    backend_tool_name,
    reasoning_effort_for,
)
from translator.schemas.anthropic import MessagesRequest, ThinkingBlock, Tool

__all__ = ["anthropic_to_responses", "reasoning_signature", "reasoning_item_of", "SIGNATURE_PREFIX"]

# Thinking blocks made from a Responses reasoning item carry `SIGNATURE_PREFIX` + base64url(JSON [item id,
# encrypted_content]). The client treats the signature as opaque and sends the block back unchanged; the
# Anthropic passthrough drops it (`is_synthetic_signature`: every `keyrelay-` signature is ours, not Anthropic's).
SIGNATURE_PREFIX = "keyrelay-rs1."


def reasoning_signature(item_id: str, encrypted_content: str) -> str:
    raw = json.dumps([item_id, encrypted_content], separators=(",", ":")).encode("utf-8")
    return SIGNATURE_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def reasoning_item_of(block: ThinkingBlock) -> dict[str, Any] | None:
    """The Responses reasoning item a thinking block stands for, or None when it is not one of ours."""
    sig = block.signature or ""
    if not sig.startswith(SIGNATURE_PREFIX):
        return None
    body = sig[len(SIGNATURE_PREFIX):]
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not (isinstance(payload, list) and len(payload) == 2 and all(isinstance(p, str) and p for p in payload)):
        return None
    summary = [{"type": "summary_text", "text": block.thinking}] if block.thinking else []
    return {"type": "reasoning", "id": payload[0], "summary": summary, "encrypted_content": payload[1]}


# The Responses API rejects max_output_tokens below 16 (Claude Code's quota probe asks max_tokens 1).
MIN_OUTPUT_TOKENS = 16

# Anthropic server tools with a Responses equivalent (the type without its version suffix).
_WEB_SEARCH = "web_search"


def _server_tool_base(tool: Tool) -> str:
    t = tool.type or ""
    head, _, version = t.rpartition("_")
    return head if version.isdigit() else t


class _ResponsesConverter(_Converter):
    """The chat conversion, plus a marker message holding an assistant turn's reasoning items (placed right
    before that turn's message), turned into `reasoning` input items by `_input_items`, and hosted tools for
    the Anthropic server tools that have a Responses equivalent."""

    def __init__(self, caps: BackendCaps, notes: list[str] | None):
        super().__init__(caps, notes)
        self.hosted: list[dict] = []

    def server_tool(self, tool: Tool) -> None:
        if _server_tool_base(tool) != _WEB_SEARCH:
            self.note(f"dropped server tool {tool.name!r} (type {tool.type!r}): no Responses API equivalent")
            return
        hosted: dict[str, Any] = {"type": "web_search"}
        if tool.allowed_domains:
            hosted["filters"] = {"allowed_domains": list(tool.allowed_domains)}
        loc = tool.user_location
        if loc:
            fields = {k: str(v) for k, v in loc.items() if k in ("city", "country", "region", "timezone") and v}
            hosted["user_location"] = {"type": "approximate", **fields}
        if tool.blocked_domains:
            self.note("dropped web search blocked_domains (the Responses web_search tool takes an allow list only)")
        self.hosted.append(hosted)

    def assistant_message(self, content: Any, out: list[dict]) -> dict[str, int]:
        at = len(out)
        order = super().assistant_message(content, out)
        if isinstance(content, list) and len(out) > at:
            items = []
            for b in content:
                if isinstance(b, ThinkingBlock):
                    item = reasoning_item_of(b)
                    if item is not None:
                        items.append(item)
            if items:
                out.insert(at, {"role": "_reasoning", "items": items})
        return order


def _part(p: dict) -> dict | None:
    t = p["type"]
    if t == "text":
        return {"type": "input_text", "text": p["text"]}
    if t == "image_url":
        return {"type": "input_image", "image_url": p["image_url"]["url"], "detail": "auto"}
    if t == "file":
        return {"type": "input_file", "filename": p["file"]["filename"], "file_data": p["file"]["file_data"]}
    return None


def _input_items(messages: list[dict]) -> tuple[str | None, list[dict]]:
    """Chat messages -> (instructions, Responses input items)."""
    instructions = None
    items: list[dict] = []
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system" and i == 0:
            instructions = m["content"]
        elif role in ("system", "developer"):
            items.append({"role": "developer", "content": m["content"]})
        elif role == "_reasoning":
            items.extend(m["items"])
        elif role == "user":
            c = m["content"]
            if isinstance(c, str):
                items.append({"role": "user", "content": c})
            else:
                parts = [q for q in (_part(p) for p in c) if q is not None]
                items.append({"role": "user", "content": parts})
        elif role == "assistant":
            if m.get("content"):
                items.append({"role": "assistant", "content": m["content"]})
            for call in m.get("tool_calls") or ():
                fn = call["function"]
                items.append({"type": "function_call", "call_id": call["id"], "name": fn["name"],
                              "arguments": fn["arguments"]})
        elif role == "tool":
            items.append({"type": "function_call_output", "call_id": m["tool_call_id"], "output": m["content"]})
    return instructions, items


def anthropic_to_responses(
    req: MessagesRequest,
    *,
    model: str,
    caps: BackendCaps,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The Responses API body (`POST {base}/responses`) for `req`, addressed to backend model `model`."""
    conv = _ResponsesConverter(caps, notes)
    instructions, items = _input_items(conv.messages(req))
    body: dict[str, Any] = {"model": model}
    if instructions:
        body["instructions"] = instructions
    body["input"] = items

    max_tokens = conv.max_tokens(req)
    if max_tokens < MIN_OUTPUT_TOKENS:
        max_tokens = MIN_OUTPUT_TOKENS
        conv.note(f"raised max_tokens to the Responses API's minimum of {MIN_OUTPUT_TOKENS}")
    body["max_output_tokens"] = max_tokens
    if req.stop_sequences:
        conv.note("stop_sequences not sent (the Responses API has none); detected in the output instead")
    conv.sampling(req, body)
    if req.top_k is not None:
        conv.note("dropped top_k")

    if req.metadata is not None and req.metadata.user_id:
        # The Responses API's per-end-user field (`user` is deprecated there); at most 64 characters.
        user = req.metadata.user_id
        limit = caps.max_user_length or 64
        if len(user) > limit:
            user = _stable_short(user, "user-sha256-", limit)
        body["safety_identifier"] = user

    thinking = req.thinking
    if thinking is not None and thinking.type != "disabled":
        if caps.reasoning_effort:
            effort = (caps.adaptive_reasoning_effort if thinking.type == "adaptive"
                      else reasoning_effort_for(thinking.budget_tokens))
            body["reasoning"] = {"effort": effort, "summary": "auto"}
        else:
            conv.note("dropped thinking (backend has no reasoning controls)")

    tools = [
        {"type": "function", "name": f["function"]["name"], "description": f["function"].get("description", ""),
         "parameters": f["function"]["parameters"], "strict": False}
        for f in conv.tools(req)
    ]
    if tools or conv.hosted:
        body["tools"] = tools + conv.hosted
        tc = req.tool_choice
        if tc is not None:
            if tc.type in ("auto", "none"):
                body["tool_choice"] = tc.type
            elif tc.type == "any":
                body["tool_choice"] = "required"
            else:
                body["tool_choice"] = {"type": "function", "name": backend_tool_name(tc.name or "", caps)}
            if tc.disable_parallel_tool_use and tc.type != "none":
                body["parallel_tool_calls"] = False

    # Nothing kept upstream; a reasoning model's state travels with the conversation (encrypted, in thinking
    # blocks). Models without reasoning reject the include.
    body["store"] = False
    if caps.reasoning_effort:
        body["include"] = ["reasoning.encrypted_content"]
    if req.stream:
        body["stream"] = True

    for name in req.dropped_fields():
        conv.note(f"dropped request field {name!r}")
    conv.flush_notes()
    return body
