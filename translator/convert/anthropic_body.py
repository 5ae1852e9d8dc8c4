"""Pure helpers for Anthropic-format bodies forwarded to an Anthropic backend (the passthrough path).

Thinking blocks that this translator made from an OpenAI-style backend's reasoning carry a signature of its
own (`keyrelay-` prefix: `SYNTHETIC_SIGNATURE`, or a Responses reasoning item's carrier). When a conversation that started on such a backend continues on an Anthropic
backend, Anthropic rejects those signatures ("Invalid signature in thinking block"), so the passthrough drops
exactly those blocks (and an assistant message left empty by that) and leaves everything else (including real
signed thinking) untouched.
"""

from __future__ import annotations

from typing import Any

from translator.convert.openai_response import is_synthetic_signature


def drop_synthetic_thinking(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(body without synthetic-signature thinking blocks, number dropped). The input is not mutated; when
    nothing is dropped the same object is returned (no copy on the hot path)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body, 0
    dropped = 0
    new_messages: list[Any] | None = None
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list) or m.get("role") != "assistant":
            continue
        kept = [
            b
            for b in content
            if not (isinstance(b, dict) and b.get("type") == "thinking" and is_synthetic_signature(b.get("signature")))
        ]
        if len(kept) != len(content):
            dropped += len(content) - len(kept)
            if new_messages is None:
                new_messages = list(messages)
            # An assistant message left empty is removed (Anthropic rejects empty content; the neighbouring
            # user turns are then consecutive, which Anthropic accepts and merges).
            new_messages[i] = {**m, "content": kept} if kept else None
    if new_messages is None:
        return body, 0
    return {**body, "messages": [m for m in new_messages if m is not None]}, dropped
