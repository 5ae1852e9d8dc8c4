"""Anthropic Messages request -> OpenAI chat completions request body (pure; see docs/conversion.md).

`anthropic_to_openai(req, model=..., caps=...)` returns a plain dict ready to be JSON-encoded for an
OpenAI-compatible upstream, or passed as keyword arguments to `litellm.acompletion`. Whatever the backend cannot
take is dropped deliberately; pass `notes=[]` to collect one short line per dropped thing (names and counts
only, never content) for a debug log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from translator.convert.call_ids import signature_of, upstream_call
from translator.convert.encoded_json import EncodedList
from translator.convert.schema_clean import clean_schema_for_gemini
from translator.schemas.anthropic import (
    Base64Source,
    ContentSource,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    ServerToolBlock,
    TextBlock,
    TextSource,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    URLSource,
)

ReasoningEffort = Literal["minimal", "low", "medium", "high"]


@dataclass(frozen=True, slots=True)
class BackendCaps:
    """What an OpenAI-style backend accepts. The server builds one per routed model (from routing config and
    LiteLLM model metadata); the defaults describe a plain OpenAI-compatible chat completions endpoint."""

    # Output limit of the model; the request's max_tokens is capped to it. None: no cap known.
    max_output_tokens: int | None = None
    # Newer OpenAI models (o-series, gpt-5) reject `max_tokens` and want `max_completion_tokens`.
    use_max_completion_tokens: bool = False
    # The backend takes `reasoning_effort` (OpenAI o-series/gpt-5, LiteLLM for Gemini/Anthropic/DeepSeek, ...).
    reasoning_effort: bool = False
    # Effort for `thinking: {"type": "adaptive"}` (the model decides how much to think).
    adaptive_reasoning_effort: ReasoningEffort = "medium"
    # The backend accepts earlier-turn reasoning on assistant messages as `reasoning_content` (DeepSeek-style,
    # LiteLLM). Otherwise earlier thinking is dropped.
    reasoning_content_input: bool = False
    # Reasoning models reject temperature/top_p; set False to drop them.
    sampling_params: bool = True
    # top_k is not an OpenAI parameter; vLLM, LiteLLM (Gemini, Anthropic) and others take it.
    top_k: bool = False
    # Forward metadata.user_id as `user`.
    user: bool = True
    # Clean tool JSON schemas to the subset Gemini accepts.
    gemini_schema: bool = False
    # The backend takes `{"type": "file"}` content parts with base64 PDFs (OpenAI, LiteLLM for several providers).
    pdf_file_parts: bool = False
    # How many stop sequences the backend takes (OpenAI: 4). None: no limit.
    max_stop_sequences: int | None = 4
    # The backend takes `parallel_tool_calls`.
    parallel_tool_calls: bool = True
    # Role used for mid-conversation system messages ("developer" for OpenAI reasoning models if wanted).
    system_role: Literal["system", "developer"] = "system"
    # Longest `user` the backend takes. Claude Code's metadata.user_id is about 150 characters; OpenAI rejects
    # long values, OpenRouter takes 128. A longer id is sent as a stable hash (same user, same value). None: any.
    max_user_length: int | None = 64
    # Longest tool call id the backend takes (OpenAI chat completions: 40). Longer ids from earlier turns (made
    # by another backend) are replaced by a stable hash, identically in tool_calls and tool messages.
    max_tool_call_id_length: int | None = 40
    # Longest function name the backend takes (OpenAI: 64; Anthropic allows longer names, e.g. MCP tools).
    # Longer names are shortened deterministically; `tool_name_map` gives the way back for the response.
    max_tool_name_length: int | None = 64
    # Where the backend wants a Gemini thought signature back on an assistant tool call: LiteLLM reads
    # `provider_specific_fields.thought_signature`, Gemini's OpenAI-compatible endpoint
    # `extra_content.google.thought_signature`. None: signatures are not sent (the backend's own call id is).
    thought_signature_field: Literal["provider_specific_fields", "extra_content"] | None = None


# Thinking budget -> reasoning effort. Claude Code asks budgets of about 4k ("think"), 10k ("think hard") and
# 32k ("ultrathink"); these thresholds map those to low / medium / high.
_EFFORT_THRESHOLDS: tuple[tuple[int, ReasoningEffort], ...] = ((4096, "low"), (16384, "medium"))

IMAGE_FROM_TOOL_RESULT = "[image returned by tool call {id}: attached in the next user message]"
ERROR_PREFIX = "Error: "


def reasoning_effort_for(budget_tokens: int | None) -> ReasoningEffort:
    if budget_tokens is None:
        return "medium"
    for limit, effort in _EFFORT_THRESHOLDS:
        if budget_tokens < limit:
            return effort
    return "high"


def _stable_short(value: str, prefix: str, limit: int) -> str:
    """A deterministic stand-in for a value that is too long for the backend."""
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
    return (prefix + digest)[:limit]


def backend_tool_name(name: str, caps: BackendCaps) -> str:
    """The function name sent to the backend for Anthropic tool `name` (unchanged unless too long)."""
    limit = caps.max_tool_name_length
    if limit is None or len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[: limit - 9]}_{digest}"


def tool_name_map(req: Any, caps: BackendCaps) -> dict[str, str]:
    """{backend name: Anthropic name} for every tool whose name `anthropic_to_openai` shortens; pass it to
    `openai_to_anthropic(tool_names=...)` / `OpenAIStreamConverter(tool_names=...)`. Usually empty."""
    return _shortened_names(getattr(req, "tools", None) or (), caps)


def _shortened_names(tools: Any, caps: BackendCaps) -> dict[str, str]:
    out: dict[str, str] = {}
    limit = caps.max_tool_name_length
    if limit is None:
        return out
    for t in tools:
        if len(t.name) > limit:
            out[backend_tool_name(t.name, caps)] = t.name
    return out


# One encoder for every call: json.dumps with non-default options builds a new JSONEncoder per call (a third
# of its cost for a small tool input). The stdlib's encoding rather than orjson's: floats keep Python's repr.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


def _document_frame(doc: DocumentBlock, text: str) -> str:
    title = doc.title or "document"
    head = f'<document title="{title}">'
    if doc.context:
        head += f"\n<context>{doc.context}</context>"
    return f"{head}\n{text}\n</document>"


def _search_result_text(block: Any) -> str:
    """Anthropic `search_result` blocks (RAG results with source, title and text content) inlined as a framed
    text; citations are an Anthropic feature other backends do not have."""
    extra = block.model_extra or {}
    content = extra.get("content")
    if isinstance(content, list):
        text = "\n".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
    elif isinstance(content, str):
        text = content
    else:
        text = ""
    if not text:
        return ""
    source = str(extra.get("source") or "")
    title = str(extra.get("title") or "")
    return f'<search_result source="{source}" title="{title}">\n{text}\n</search_result>'


class _Converter:
    def __init__(self, caps: BackendCaps, notes: list[str] | None):
        self.caps = caps
        self.notes = notes
        self._counts: dict[str, int] = {}

    def call_id(self, tool_id: str) -> str:
        """The backend's own id for a tool_use id the client sent back (see call_ids)."""
        tool_id = upstream_call(tool_id)[0]
        limit = self.caps.max_tool_call_id_length
        if limit is not None and len(tool_id) > limit:
            self.note("shortened tool call ids longer than the backend takes")
            return _stable_short(tool_id, "toolu_", limit)
        return tool_id

    def max_tokens(self, req: MessagesRequest) -> int:
        """The request's max_tokens, capped at the model's output limit."""
        limit = self.caps.max_output_tokens
        if limit is not None and req.max_tokens > limit:
            self.note("capped max_tokens to the model's output limit")
            return limit
        return req.max_tokens

    def sampling(self, req: MessagesRequest, body: dict[str, Any]) -> None:
        """temperature and top_p into `body`, unless the backend rejects sampling parameters."""
        if self.caps.sampling_params:
            if req.temperature is not None:
                body["temperature"] = req.temperature
            if req.top_p is not None:
                body["top_p"] = req.top_p
        elif req.temperature is not None or req.top_p is not None:
            self.note("dropped temperature/top_p (backend rejects sampling parameters)")

    def note(self, what: str) -> None:
        self._counts[what] = self._counts.get(what, 0) + 1

    def flush_notes(self) -> None:
        if self.notes is not None:
            for what, n in self._counts.items():
                self.notes.append(what if n == 1 else f"{what} (x{n})")

    # ------------------------------------------------------------------ parts

    def image_part(self, block: ImageBlock) -> dict | None:
        src = block.source
        if isinstance(src, Base64Source):
            return {"type": "image_url", "image_url": {"url": f"data:{src.media_type};base64,{src.data}"}}
        if isinstance(src, URLSource):
            return {"type": "image_url", "image_url": {"url": src.url}}
        self.note(f"dropped image with source type {src.type!r}")
        return None

    def document_part(self, block: DocumentBlock) -> dict | None:
        src = block.source
        if isinstance(src, TextSource):
            return {"type": "text", "text": _document_frame(block, src.data)}
        if isinstance(src, ContentSource):
            if isinstance(src.content, str):
                text = src.content
            else:
                text = "\n".join(b.text for b in src.content if isinstance(b, TextBlock))
            return {"type": "text", "text": _document_frame(block, text)}
        if isinstance(src, Base64Source):
            if src.media_type == "application/pdf" and self.caps.pdf_file_parts:
                name = (block.title or "document") + ("" if (block.title or "").endswith(".pdf") else ".pdf")
                return {
                    "type": "file",
                    "file": {"filename": name, "file_data": f"data:application/pdf;base64,{src.data}"},
                }
            if src.media_type.startswith("text/"):
                try:
                    text = base64.b64decode(src.data).decode("utf-8")
                except (ValueError, binascii.Error):
                    self.note("dropped undecodable base64 text document")
                    return None
                return {"type": "text", "text": _document_frame(block, text)}
            self.note(f"dropped {src.media_type} document (backend takes no file parts)")
            return None
        self.note(f"dropped document with source type {src.type!r}")
        return None

    def user_parts(self, blocks: list) -> list[dict]:
        parts: list[dict] = []
        for b in blocks:
            t = b.type
            if t == "text":
                parts.append({"type": "text", "text": b.text})
            elif t == "image":
                p = self.image_part(b)
                if p:
                    parts.append(p)
            elif t == "document":
                p = self.document_part(b)
                if p:
                    parts.append(p)
            elif t in ("thinking", "redacted_thinking"):
                self.note("dropped thinking block in a user message")
            elif isinstance(b, ServerToolBlock):
                self.note(f"dropped server tool block {t!r}")
            elif t == "tool_use":
                self.note("dropped tool_use block in a user message")
            elif t == "search_result":
                st = _search_result_text(b)
                if st:
                    parts.append({"type": "text", "text": st})
            else:
                self.note(f"dropped unknown content block {t!r}")
        return parts

    # ------------------------------------------------------------------ messages

    @staticmethod
    def collapse(parts: list[dict]) -> str | list[dict] | None:
        """Text-only content becomes one string (every OpenAI-compatible backend takes that); parts with an
        image or file stay a list."""
        if not parts:
            return None
        if all(p["type"] == "text" for p in parts):
            return "\n\n".join(p["text"] for p in parts)
        return parts

    def system_text(self, content: Any) -> str:
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        texts = []
        for b in content:
            if isinstance(b, TextBlock):
                texts.append(b.text)
            else:
                self.note(f"dropped non-text system block {b.type!r}")
        return "\n\n".join(texts)

    def tool_result_message(self, block: ToolResultBlock, followup: list[dict]) -> dict:
        content = block.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            texts: list[str] = []
            for b in content:
                t = b.type
                if t == "text":
                    texts.append(b.text)
                elif t == "image":
                    p = self.image_part(b)
                    if p:
                        texts.append(IMAGE_FROM_TOOL_RESULT.format(id=block.tool_use_id))
                        followup.append(p)
                elif t == "document":
                    p = self.document_part(b)
                    if p is None:
                        continue
                    if p["type"] == "text":
                        texts.append(p["text"])
                    else:
                        texts.append(IMAGE_FROM_TOOL_RESULT.format(id=block.tool_use_id).replace("image", "file", 1))
                        followup.append(p)
                elif t == "search_result":
                    st = _search_result_text(b)
                    if st:
                        texts.append(st)
                else:
                    self.note(f"dropped {t!r} block in a tool_result")
            text = "\n\n".join(texts)
        if block.is_error:
            text = ERROR_PREFIX + text
        return {"role": "tool", "tool_call_id": self.call_id(block.tool_use_id), "content": text}

    def user_message(
        self, content: Any, out: list[dict], call_order: dict[str, int], waiting: list[dict]
    ) -> None:
        if isinstance(content, str):
            out.extend(waiting)
            out.append({"role": "user", "content": content})
            return
        results = [b for b in content if b.type == "tool_result"]
        others = [b for b in content if b.type != "tool_result"] if results else content
        followup: list[dict] = []
        orphans: list[dict] = []
        if results:
            # Tool messages go right after the assistant message, in the order of its calls. A result whose id
            # the previous assistant message did not ask for cannot be a tool message (OpenAI rejects it): it
            # becomes framed text in the following user message.
            results.sort(key=lambda b: call_order.get(b.tool_use_id, len(call_order)))
            for b in results:
                msg = self.tool_result_message(b, followup)
                if b.tool_use_id in call_order:
                    out.append(msg)
                else:
                    self.note("tool_result without a matching tool_use in the previous assistant message")
                    orphans.append({"type": "text", "text": f"[result of tool call {b.tool_use_id}]\n{msg['content']}"})
        out.extend(waiting)
        parts = orphans + followup + self.user_parts(others)
        collapsed = self.collapse(parts)
        if collapsed is not None:
            out.append({"role": "user", "content": collapsed})

    def assistant_message(self, content: Any, out: list[dict]) -> dict[str, int]:
        """Append the assistant message; return tool call id -> position (for ordering the tool results)."""
        if isinstance(content, str):
            if content:
                out.append({"role": "assistant", "content": content})
            return {}
        texts: list[str] = []
        calls: list[dict] = []
        reasoning: list[str] = []
        for b in content:
            if isinstance(b, TextBlock):
                texts.append(b.text)
            elif isinstance(b, ToolUseBlock):
                call: dict[str, Any] = {
                    "id": self.call_id(b.id),
                    "type": "function",
                    "function": {"name": backend_tool_name(b.name, self.caps), "arguments": _dumps(b.input)},
                }
                sig = signature_of(*upstream_call(b.id))
                if sig is not None:
                    field = self.caps.thought_signature_field
                    if field == "provider_specific_fields":
                        call["provider_specific_fields"] = {"thought_signature": sig}
                    elif field == "extra_content":
                        call["extra_content"] = {"google": {"thought_signature": sig}}
                    else:
                        self.note("dropped thought signatures (backend takes none)")
                calls.append(call)
            elif isinstance(b, ThinkingBlock):
                if self.caps.reasoning_content_input:
                    reasoning.append(b.thinking)
                else:
                    self.note("dropped earlier-turn thinking")
            elif isinstance(b, RedactedThinkingBlock):
                self.note("dropped earlier-turn redacted_thinking")
            elif isinstance(b, ServerToolBlock):
                self.note(f"dropped server tool block {b.type!r}")
            else:
                self.note(f"dropped {b.type!r} block in an assistant message")
        if not texts and not calls:
            if reasoning:
                self.note("dropped assistant message holding only thinking")
            return {}
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            msg["tool_calls"] = calls
        if reasoning:
            msg["reasoning_content"] = "\n\n".join(reasoning)
        out.append(msg)
        return {b.id: i for i, b in enumerate(x for x in content if isinstance(x, ToolUseBlock))}

    def messages(self, req: MessagesRequest) -> list[dict]:
        out: list[dict] = []
        system = self.system_text(req.system)
        if system:
            out.append({"role": "system", "content": system})
        call_order: dict[str, int] = {}
        # System messages between an assistant's tool calls and their results: OpenAI needs the tool messages
        # directly after the calls, so these wait until the results are placed.
        waiting: list[dict] = []
        for m in req.messages:
            if m.role == "system":
                text = self.system_text(m.content)
                if text:
                    (waiting if call_order else out).append({"role": self.caps.system_role, "content": text})
                continue
            if m.role == "assistant":
                out.extend(waiting)
                waiting = []
                call_order = self.assistant_message(m.content, out)
                continue
            self.user_message(m.content, out, call_order, waiting)
            waiting = []
            call_order = {}
        out.extend(waiting)
        return out

    # ------------------------------------------------------------------ tools

    def server_tool(self, tool: Any) -> None:
        """An Anthropic-defined tool (web search, web fetch, code execution, bash, text editor, computer,
        memory, ...): Anthropic runs it or defines its schema; a chat completions backend has no equivalent."""
        self.note(f"dropped server tool {tool.name!r} (type {tool.type!r}): the backend has no equivalent")

    def tools(self, req: MessagesRequest) -> list[dict]:
        return self.function_tools(req.tools)

    def function_tools(self, defined: list | None) -> list[dict]:
        tools: list[dict] = []
        caps = self.caps
        gemini = caps.gemini_schema
        limit = caps.max_tool_name_length
        for t in defined or ():  # (Claude Code sends two dozen tools on every request: kept to few calls each)
            kind, params = t.type, t.input_schema
            if params is None or (kind is not None and kind != "custom"):  # not `t.is_custom`
                self.server_tool(t)
                continue
            params = params or {"type": "object", "properties": {}}
            if gemini:
                params = clean_schema_for_gemini(params)
            name = t.name
            if limit is not None and len(name) > limit:
                name = backend_tool_name(name, caps)
                self.note("shortened tool names longer than the backend takes")
            fn: dict[str, Any] = {"name": name, "parameters": params}
            if t.description:
                fn["description"] = t.description
            tools.append({"type": "function", "function": fn})
        return tools


@dataclass(frozen=True, slots=True)
class ConvertedTools:
    """A request's tool definitions converted for a backend's caps (`convert_tools`): kept and shared read-only
    by the requests with the same tools (translator.repeated_tools)."""

    tools: EncodedList  # the function tools of the chat completions body, with their encoding
    notes: tuple[tuple[str, int], ...]  # what their conversion noted, and how often
    names: dict[str, str]  # `tool_name_map` of these tools


def convert_tools(defined: list, caps: BackendCaps) -> ConvertedTools:
    """What `anthropic_to_openai` makes of the tool definitions `defined` for `caps` (pass it as
    `converted_tools`)."""
    conv = _Converter(caps, None)
    tools = EncodedList(conv.function_tools(defined))
    return ConvertedTools(tools, tuple(conv._counts.items()), _shortened_names(defined, caps))


def anthropic_to_openai(
    req: MessagesRequest,
    *,
    model: str,
    caps: BackendCaps,
    notes: list[str] | None = None,
    converted_tools: ConvertedTools | None = None,
) -> dict[str, Any]:
    """The OpenAI chat completions body for `req`, addressed to backend model `model`. `converted_tools`:
    `convert_tools(req.tools, caps)` made before (the same body, without converting the tools again)."""
    conv = _Converter(caps, notes)
    body: dict[str, Any] = {"model": model, "messages": conv.messages(req)}

    body["max_completion_tokens" if caps.use_max_completion_tokens else "max_tokens"] = conv.max_tokens(req)

    if req.stop_sequences:
        stops = req.stop_sequences
        if caps.max_stop_sequences is not None and len(stops) > caps.max_stop_sequences:
            stops = stops[: caps.max_stop_sequences]
            conv.note("dropped stop sequences beyond the backend's limit")
        body["stop"] = list(stops)

    conv.sampling(req, body)
    if req.top_k is not None:
        if caps.top_k:
            body["top_k"] = req.top_k
        else:
            conv.note("dropped top_k")

    if req.metadata is not None and req.metadata.user_id:
        if caps.user:
            user = req.metadata.user_id
            if caps.max_user_length is not None and len(user) > caps.max_user_length:
                user = _stable_short(user, "user-sha256-", caps.max_user_length)
                conv.note("sent metadata.user_id as a stable hash (too long for the backend)")
            body["user"] = user
        else:
            conv.note("dropped metadata.user_id")

    thinking = req.thinking
    if thinking is not None and thinking.type != "disabled":
        if caps.reasoning_effort:
            body["reasoning_effort"] = (
                caps.adaptive_reasoning_effort
                if thinking.type == "adaptive"
                else reasoning_effort_for(thinking.budget_tokens)
            )
        else:
            conv.note("dropped thinking (backend has no reasoning controls)")

    if converted_tools is None:
        tools = conv.tools(req)
    else:
        tools = converted_tools.tools
        for what, n in converted_tools.notes:
            conv._counts[what] = conv._counts.get(what, 0) + n
    if tools:
        body["tools"] = tools
        tc = req.tool_choice
        if tc is not None:
            if tc.type == "auto":
                body["tool_choice"] = "auto"
            elif tc.type == "any":
                body["tool_choice"] = "required"
            elif tc.type == "none":
                body["tool_choice"] = "none"
            else:
                body["tool_choice"] = {"type": "function", "function": {"name": backend_tool_name(tc.name, caps)}}
            if tc.disable_parallel_tool_use and tc.type != "none":
                if caps.parallel_tool_calls:
                    body["parallel_tool_calls"] = False
                else:
                    conv.note("dropped disable_parallel_tool_use")
    elif req.tool_choice is not None and req.tool_choice.type != "none" and req.tools:
        conv.note("dropped tool_choice (no tool left for this backend)")

    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}

    for name in req.dropped_fields():
        conv.note(f"dropped request field {name!r}")
    conv.flush_notes()
    return body
