"""Request bodies for the benchmark.

- tiny: one user message.
- claude_code: the shape Claude Code sends (about 70 KB: ~24 tools with real-looking JSON schemas, `system` as
  text blocks with cache_control, a 30-turn history with tool_use / tool_result, thinking, metadata, max_tokens
  64000), read from tests/translator/fixtures/claude_code_request.json.

`openai_equivalent` gives the OpenAI chat-completions body of the same conversation, for hitting the upstream
directly (path a); it uses the translator's own converter so both paths carry the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from bench.procs import REPO

FIXTURE = REPO / "tests" / "translator" / "fixtures" / "claude_code_request.json"
MODEL = "claude-sonnet-4-5-20250929"


def tiny_body() -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello."}]}


def claude_code_body() -> tuple[dict[str, Any], str]:
    """The Claude-Code-sized body and where it comes from (the committed test fixture)."""
    return json.loads(FIXTURE.read_text()), str(FIXTURE.relative_to(REPO))


def with_stream(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    out = dict(body)
    out["stream"] = stream
    return out


# ---------------------------------------------------------------- OpenAI-format equivalent for the direct path


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content or [])


def simple_openai_equivalent(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A plain conversion (system, text, tool_use -> tool_calls, tool_result -> tool messages, tools ->
    functions): what the LiteLLM-based reference proxy (bench/reference_proxy.py) sends upstream."""
    msgs: list[dict[str, Any]] = []
    if body.get("system"):
        msgs.append({"role": "system", "content": _text_of(body["system"])})
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, str):
            msgs.append({"role": m["role"], "content": content})
            continue
        texts = [b["text"] for b in content if b.get("type") == "text"]
        calls = [{"id": b["id"], "type": "function",
                  "function": {"name": b["name"], "arguments": json.dumps(b["input"])}}
                 for b in content if b.get("type") == "tool_use"]
        for b in content:
            if b.get("type") == "tool_result":
                msgs.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": _text_of(b["content"])})
        if texts or calls:
            msg: dict[str, Any] = {"role": m["role"], "content": "\n".join(texts) or None}
            if calls:
                msg["tool_calls"] = calls
            msgs.append(msg)
    out: dict[str, Any] = {"model": model, "messages": msgs, "max_tokens": min(body.get("max_tokens", 1024), 16384)}
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                          "parameters": t["input_schema"]}} for t in body["tools"]]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def openai_equivalent(body: dict[str, Any], model: str) -> tuple[dict[str, Any], str]:
    """The OpenAI body the translator's own converter makes of `body`, and the converter's name."""
    # Imported here: bench/reference_proxy.py imports this module and must not load the translator.
    from translator.convert.openai_request import BackendCaps, anthropic_to_openai
    from translator.schemas.anthropic import MessagesRequest

    req = MessagesRequest.model_validate(body)
    return anthropic_to_openai(req, model=model, caps=BackendCaps()), "translator.convert.openai_request"
